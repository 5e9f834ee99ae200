"""Fine-tuning pretrained backbones: freezing per family, the frozen backbone's feature cache, layer decay,
EMA of the weights, and a run's best_model.pth as the next one's pretrained_path. Tiny real runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from src.cli.check import run_check
from src.config.loader import apply_overrides, load_config
from src.engine.settings import LoopSettings
from src.models.factory import build_model
from src.models.freeze import freeze
from src.models.zoo import weights_preprocessing
from src.optimization.runner import run_study
from src.training.ema import RAW_WEIGHTS, WeightEMA
from src.training.loop import train_epoch
from src.training.loss import WeightedCSILoss
from src.training.optimizer import create_optimizer, create_scheduler
from src.training.trainer import train_model
from src.utils.checkpoint import read_checkpoint
from src.utils.errors import ConfigError
from src.utils.seed import seed_everything
from tests.conftest import run_main, write_config
from tests.zoo_caches import write_hf_vit_cache, write_raddino_cache, write_timm_cache

TIMING = ("images_per_second", "epoch_seconds")


def project(root: Path, data: Path, **sections) -> Path:
    """A config of custom_cnn at 32 px without augmentation (cached features cannot follow it)."""
    return write_config(root / "config" / "config.ini", data, Augmentation={"enabled": "false"}, **sections)


def backbone_of(state: dict) -> dict[str, torch.Tensor]:
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


def history(run_dir: Path) -> list[dict]:
    logs = run_dir / "logs"
    rows = zip(json.loads((logs / "training_history.json").read_text()),
               json.loads((logs / "validation_history.json").read_text()))
    return [{k: v for k, v in {**t, **v}.items() if k not in TIMING} for t, v in rows]


def feature_shards(cache_dir: Path) -> dict[str, int]:
    """Every shard file of every feature store, with its modification time."""
    return {str(p.relative_to(cache_dir)): p.stat().st_mtime_ns for p in (cache_dir / "features").glob("*/*.npy")}


def test_frozen_backbone_stays_bit_identical_and_heads_on_cached_features_equal_heads_through_it(
        tmp_path, tiny_dataset):
    start = tmp_path / "backbone.pth"
    torch.manual_seed(5)
    torch.save(build_model(load_config(project(tmp_path / "p", tiny_dataset), env={})).backbone.state_dict(), start)
    runs = {}
    for cached in (True, False):
        cfg = load_config(project(tmp_path / str(cached), tiny_dataset, Model={
            "freeze": "backbone", "pretrained_path": start}, Training={"feature_cache": cached}), env={})
        runs[cached] = train_model(cfg).run_dir
    initial = torch.load(start, weights_only=True)
    for run_dir in runs.values():
        trained = backbone_of(read_checkpoint(run_dir / "last_model.pth")["model"])
        assert trained.keys() == initial.keys()
        assert all(torch.equal(trained[k], initial[k]) for k in initial)  # BatchNorm statistics included
    # The same data order and dropout draws: the heads trained on the cache are those trained through the backbone.
    cached_history, through_history = history(runs[True]), history(runs[False])
    assert [row.keys() for row in cached_history] == [row.keys() for row in through_history]
    for cached_row, through_row in zip(cached_history, through_history):
        for key, value in cached_row.items():
            assert value == pytest.approx(through_row[key], rel=1e-5, abs=1e-6, nan_ok=True), key
    cached, through = (read_checkpoint(runs[c] / "last_model.pth")["model"] for c in (True, False))
    heads = [k for k in cached if k.startswith("head.")]
    assert heads and all(torch.allclose(cached[k], through[k], atol=1e-6) for k in heads)
    assert feature_shards(tiny_dataset / "cache")  # the cached run wrote them; the other never reads them


def test_feature_cache_is_reused_by_runs_and_hyperopt_trials_and_rebuilt_for_other_weights(tmp_path, tiny_dataset,
                                                                                            capsys):
    path = project(tmp_path, tiny_dataset, Model={"freeze": "backbone"}, Training={"n_epochs": 1},
                   Hyperopt={"Training.learning_rate": "loguniform(1e-4, 1e-2)", "Model.dropout": "uniform(0.1, 0.5)",
                             "max_epochs": 1, "n_trials": 1, "output_dir": tmp_path / "hyperopt"})
    cfg = load_config(path, env={})
    first = train_model(cfg)
    built = feature_shards(tiny_dataset / "cache")
    assert len({Path(name).parent for name in built}) == 1
    train_model(apply_overrides(cfg, {"Model.dropout": 0.2, "Training.learning_rate": 0.01}))
    run_study(cfg)  # a hyperopt trial over head settings
    run_check(cfg, {"config_path": path})
    assert feature_shards(tiny_dataset / "cache") == built  # nothing written again
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Features")]
    assert "(0 computed now, 20 reused; 20 x 1x512 float32" in line  # the 16 train and 4 val images
    # Other backbone weights (a trained run's, through its best_model.pth): another store, computed anew.
    retrained = train_model(apply_overrides(cfg, {"Model.pretrained_path": str(first.run_dir / "best_model.pth"),
                                                  "Model.freeze": "none"})).run_dir / "best_model.pth"
    train_model(apply_overrides(cfg, {"Model.pretrained_path": str(retrained)}))
    after = feature_shards(tiny_dataset / "cache")
    assert set(built) < set(after) and {n: after[n] for n in built} == built
    assert len({Path(name).parent for name in after}) == 2


def test_a_best_model_is_a_pretrained_path_for_its_architecture_only(tmp_path, tiny_dataset):
    cfg = load_config(project(tmp_path, tiny_dataset, Training={"n_epochs": 1},
                              Data={"normalization": "custom", "normalization_mean": 0.4, "normalization_std": 0.3}),
                      env={})
    best = train_model(cfg).run_dir / "best_model.pth"
    reused = apply_overrides(cfg, {"Model.pretrained_path": str(best), "Data.normalization": "weights"})
    model = build_model(reused)
    trained = backbone_of(read_checkpoint(best)["model"])
    assert all(torch.equal(model.backbone.state_dict()[k], trained[k]) for k in trained)
    pre = weights_preprocessing(reused.model)
    assert (pre.mean, pre.std, pre.size) == (0.4, 0.3, 32)  # the normalisation its run recorded
    with pytest.raises(ConfigError, match="a checkpoint of a custom_cnn model, not resnet50"):
        build_model(apply_overrides(reused, {"Model.model_arch": "resnet50"}))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The tiny offline RAD-DINO, hf: ViT and timm models of tests/zoo_caches.py in this test's hub cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    hf_home = Path(os.environ["HF_HOME"])
    write_raddino_cache(hf_home, tmp_path)
    write_hf_vit_cache(hf_home, tmp_path, "tiny-org/tiny-vit")
    write_timm_cache(hf_home, tmp_path, "test_vit.r160_in1k")
    write_timm_cache(hf_home, tmp_path, "test_resnet.r160_in1k")


# arch, image size, N, the backbone parameters all_but_last:N leaves trainable (by prefix)
FAMILIES = [
    ("custom_cnn", 32, 2, ("3.", "4.")),
    ("resnet50", 32, 1, ("layer4.",)),
    ("densenet121", 32, 1, ("features.transition3.", "features.denseblock4.", "features.norm5.")),
    ("vit_b_16", 32, 2, ("encoder.layers.encoder_layer_10.", "encoder.layers.encoder_layer_11.", "encoder.ln.")),
    ("raddino", 28, 1, ("model.encoder.layer.1.", "model.layernorm.")),
    ("hf:tiny-org/tiny-vit", 32, 1, ("model.layers.1.", "model.layernorm.", "model.pooler.")),
    ("timm:test_vit.r160_in1k", 32, 2, ("model.blocks.4.", "model.blocks.5.", "model.norm.")),
    ("timm:test_resnet.r160_in1k", 32, 1, ("model.layer4.",)),
]


def test_all_but_last_n_leaves_exactly_the_last_n_blocks_trainable_in_every_family(hub):
    base = load_config(None, env={})
    for arch, size, n, trainable in FAMILIES:
        pretrained = arch.startswith(("raddino", "hf:", "timm:"))  # the tiny offline weights
        cfg = apply_overrides(base, {"Model.model_arch": arch, "Model.pretrained": pretrained,
                                     "Data.image_size": size, "Model.freeze": f"all_but_last:{n}"})
        model = build_model(cfg)
        freeze(model, cfg.model.freeze)
        names = {name: p.requires_grad for name, p in model.named_parameters()}
        expected = {name for name in names if name.startswith("head.")
                    or name.removeprefix("backbone.").startswith(trainable)}
        assert {name for name, grad in names.items() if grad} == expected, arch
        optimizer = create_optimizer(model, cfg)  # holds only what trains
        assert sum(len(g["params"]) for g in optimizer.param_groups) == len(expected), arch
        model.train()
        frozen_norms = [m for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                        and not any(p.requires_grad for p in m.parameters())]
        assert all(not m.training for m in frozen_norms), arch  # frozen BatchNorm keeps its statistics
        with pytest.raises(ConfigError, match="expected all_but_last:1 to all_but_last:"):
            freeze(model, "all_but_last:99")


def test_bad_freeze_values_are_one_line_and_exit_2(tmp_path, tiny_dataset):
    project(tmp_path, tiny_dataset)
    for value, says in (("all_but_last:x", "expected one of none, backbone, all_but_last:N (a whole number >= 1)"),
                        ("all_but_last:9", "custom_cnn: it has 5 blocks, so expected all_but_last:1 to "
                                           "all_but_last:5, or none")):
        result = run_main("--mode", "train", "--set", f"Model.freeze={value}", cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        (line,) = result.stderr.strip().splitlines()
        assert says in line
        assert not (tiny_dataset / "cache").exists()  # refused before the images were read


def test_layer_decay_and_head_multiplier_give_each_group_its_learning_rate():
    cfg = apply_overrides(load_config(None, env={}), {
        "Model.model_arch": "custom_cnn", "Model.pretrained": False, "Data.image_size": 32,
        "Training.learning_rate": 0.01, "Optimization.layer_decay": 0.5, "Optimization.head_lr_multiplier": 4,
        "Optimization.scheduler": "onecycle"})
    model = build_model(cfg)
    optimizer = create_optimizer(model, cfg)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        # custom_cnn's five blocks are named 0..4: block 4 is one below the head
        expected = 0.04 if name.startswith("head.") else 0.01 * 0.5 ** (5 - int(name.split(".")[1]))
        assert lr_of[id(param)] == pytest.approx(expected), name
    schedule = create_scheduler(optimizer, cfg, "max", steps_per_epoch=10)  # onecycle peaks at each group's lr
    assert [g["max_lr"] for g in optimizer.param_groups] == pytest.approx([g["lr_scale"] * 0.01
                                                                          for g in optimizer.param_groups])
    assert schedule.per_step


def test_ema_after_k_steps_equals_the_formula_applied_by_hand():
    cfg = apply_overrides(load_config(None, env={}), {"Model.model_arch": "custom_cnn", "Model.pretrained": False,
                                                      "Data.image_size": 32, "Optimization.optimizer": "sgd"})
    torch.manual_seed(0)
    model = build_model(cfg)
    freeze(model, "all_but_last:1")
    optimizer = create_optimizer(model, cfg)
    decay, steps = 0.9, 4
    ema = WeightEMA(model, decay)
    weights = [{k: v.clone() for k, v in model.state_dict().items()}]

    def after_step():
        ema.update()
        weights.append({k: v.clone() for k, v in model.state_dict().items()})

    batches = [(torch.randn(2, 1, 32, 32), torch.randint(0, 5, (2, 6)), ["a", "b"]) for _ in range(steps)]
    train_epoch(model, batches, WeightedCSILoss(), optimizer, torch.device("cpu"), 1, LoopSettings(progress=False),
                after_step=after_step)
    assert len(weights) == steps + 1
    averaged = ema.state_dict(model)
    for name in ema.names:  # the trained block's weights and BatchNorm statistics, and the heads
        by_hand = weights[0][name]
        for step in range(1, steps + 1):
            by_hand = decay * by_hand + (1 - decay) * weights[step][name]
        assert torch.allclose(averaged[name], by_hand, atol=1e-6), name
    assert any(n.endswith("running_mean") for n in ema.names) and "head.classifiers.0.1.weight" in ema.names
    assert not any(n.startswith("backbone.0.") for n in ema.names)  # frozen: its average is itself
    assert all(torch.equal(averaged[k], weights[-1][k]) for k in averaged if k not in ema.names)


class _StopAfter(Exception):
    pass


def test_resume_with_ema_is_exact(tmp_path, tiny_dataset):
    """Heads first on cached features, the whole model from epoch 2, an EMA throughout; cut after epoch 1."""
    cfg = load_config(project(tmp_path, tiny_dataset, Model={"freeze": "backbone"},
                              Training={"n_epochs": 2, "ema_decay": 0.9, "unfreeze_epoch": 2},
                              Callbacks={"save_top_k": 2}), env={})
    whole = train_model(apply_overrides(cfg, {"Training.run_name": "whole"})).run_dir

    def stop_after_one(epoch: int, metrics: dict) -> None:
        raise _StopAfter

    with pytest.raises(_StopAfter):
        train_model(apply_overrides(cfg, {"Training.run_name": "cut"}), on_epoch_end=stop_after_one)
    (cut,) = tmp_path.glob("models/*_cut")
    assert read_checkpoint(cut / "last_model.pth")["epoch"] == 1
    train_model(cfg, resume=cut)
    assert history(cut) == history(whole)
    resumed, reference = (read_checkpoint(d / "last_model.pth") for d in (cut, whole))
    for entry in ("model", RAW_WEIGHTS):
        assert resumed[entry].keys() == reference[entry].keys()
        assert all(torch.equal(resumed[entry][k], reference[entry][k]) for k in reference[entry]), entry
    raw = reference[RAW_WEIGHTS]
    assert not all(torch.equal(reference["model"][k], raw[k]) for k in raw)  # the average is not the weights
    after_heads = read_checkpoint(whole / "checkpoint_epoch_1.pth")[RAW_WEIGHTS]
    changed = {k.split(".")[0] for k in raw if not torch.equal(raw[k], after_heads[k])}
    assert changed == {"backbone", "head"}  # frozen in epoch 1, the backbone trained in epoch 2
    seed_everything(cfg.training.seed)  # the run's initial weights: the optimizer held the backbone, never moved it
    initial = build_model(cfg).state_dict()
    assert all(torch.equal(after_heads[k], initial[k]) for k in after_heads if k.startswith("backbone."))
