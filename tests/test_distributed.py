"""Training on several processes and on GPUs, as far as a CPU shows it: two real gloo ranks that take
every decision together, backbones with parameters that get no gradient under DDP, Ctrl-C on one
rank, a GPU run's checkpoint on a machine without GPUs, and the rules that only a GPU would exercise
(tested as rules: the precision probe's out-of-memory skip, sync_batchnorm, threads on a GPU, the
host reads of a training step)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from src.cli.export import run_export
from src.cli.predict import run_predict
from src.cli.train import run_train
from src.config.loader import apply_overrides, load_config
from src.engine.precision import Precision, pick, time_steps
from src.engine.settings import LoopSettings
from src.optimization.runner import require_worker_processes
from src.training.loop import NonFiniteGuard, train_epoch
from src.training.loss import WeightedCSILoss
from src.training.parallel import use_sync_batchnorm
from src.training.trainer import train_model
from src.utils.checkpoint import read_checkpoint, save_checkpoint
from src.utils.distributed import DistInfo
from src.utils.errors import ConfigError, TrainingDiverged
from tests.conftest import REPO, _free_port, write_config, write_png_dataset
from tests.zoo_caches import write_hf_vit_cache, write_raddino_cache

TIMEOUT = 300  # seconds a two-rank run may take on a busy 2-core machine before the test fails


class Ranks:
    """`python ARGS` as `count` processes of one gloo group, with the environment torchrun gives its
    workers (without torchrun, so that a signal reaches the one rank it is sent to). Their output is
    read as it comes, so that no process ever blocks on a full pipe."""

    def __init__(self, args: list[str], cwd: Path, env: dict | None = None, count: int = 2) -> None:
        common = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1",
                  "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(count),
                  "LOCAL_WORLD_SIZE": str(count), **(env or {})}
        self.procs = [subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True,
                                       env={**common, "RANK": str(rank), "LOCAL_RANK": str(rank)})
                      for rank in range(count)]
        self.lines: list[list[str]] = [[] for _ in self.procs]
        self.arrived = threading.Condition()
        self.readers = [threading.Thread(target=self._read, args=(rank,), daemon=True) for rank in range(count)]
        for reader in self.readers:
            reader.start()

    def _read(self, rank: int) -> None:
        for line in self.procs[rank].stdout:
            with self.arrived:
                self.lines[rank].append(line)
                self.arrived.notify_all()

    def output(self, rank: int) -> str:
        with self.arrived:
            return "".join(self.lines[rank])

    def wait_for(self, rank: int, pattern: str) -> None:
        """Until `rank` has printed a line matching `pattern`."""
        with self.arrived:
            seen = self.arrived.wait_for(lambda: any(re.search(pattern, line) for line in self.lines[rank]), TIMEOUT)
        assert seen, f"rank {rank} never printed {pattern!r}:\n{self.output(rank)[-3000:]}"

    def finish(self) -> list[tuple[int, str]]:
        """(exit code, output) of each rank. A rank still running after TIMEOUT fails the test with
        every rank's output, a hung one's ending with its threads' stacks (faulthandler's, on SIGABRT)."""
        try:
            for proc in self.procs:
                proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for proc in self.procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGABRT)
                proc.wait(timeout=60)
        for reader in self.readers:
            reader.join(timeout=60)
        hung = [rank for rank, proc in enumerate(self.procs) if proc.returncode in (-signal.SIGABRT, None)]
        assert not hung, f"rank(s) {hung} hung:\n" + "\n".join(
            f"--- rank {rank}:\n{self.output(rank)[-4000:]}" for rank in range(len(self.procs)))
        return [(proc.returncode, self.output(rank)) for rank, proc in enumerate(self.procs)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, data_dir) -> tuple[list[dict], str, list[str]]:
    """One two-rank launch of tests/ddp_scenarios.py for the tests below (each launch costs two
    interpreters' start-up): a non-finite loss on one rank, then raddino, hf: and timm: training.
    Returns each rank's report, what rank 0 printed, and the training configs."""
    root = tmp_path_factory.mktemp("two_ranks")
    hf_home, work = root / "hf", root / "work"
    work.mkdir()
    write_raddino_cache(hf_home, work)
    write_hf_vit_cache(hf_home, work, "tiny/vit")
    configs = []
    for arch, size, pretrained in (("raddino", 56, "true"), ("hf:tiny/vit", 32, "false"),
                                   ("timm:test_convnext", 32, "false")):
        name = arch.replace(":", "_").replace("/", "_")
        configs.append(str(write_config(root / name / "config.ini", data_dir,
                                        Model={"model_arch": arch, "pretrained": pretrained},
                                        Data={"image_size": size, "cache_dir": root / "cache"},
                                        Training={"n_epochs": 1, "batch_size": 8, "run_name": name,
                                                  "output_dir": root / "models"})))
    out = root / "out"
    out.mkdir()
    results = Ranks(["-m", "tests.ddp_scenarios", str(out), *configs], REPO,
                    {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}).finish()
    for code, output in results:
        assert code == 0, output[-3000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)], results[0][1], configs


def test_a_non_finite_loss_on_one_rank_skips_the_same_step_on_both(two_ranks):
    ranks, _, _ = two_ranks
    for optimizer in ("adam", "sgd"):  # skipped on the device (fused) and on the host
        seen = [r["nonfinite"][optimizer] for r in ranks]
        assert [s["skipped_steps"] for s in seen] == [1, 1], seen
        assert all(s["weights_agree"] and s["trained"] for s in seen), seen
        assert all(np.isfinite(s["train_loss"]) for s in seen) and seen[0]["train_loss"] == seen[1]["train_loss"]


def test_raddino_hf_and_timm_backbones_train_two_ddp_steps(two_ranks):
    """Each has parameters its forward leaves without a gradient (RAD-DINO's mask_token, a
    transformers ViT's pooler, ConvNeXt's head norm, which timm's forward_features skips), on which
    DDP would stop at the second step."""
    ranks, printed, configs = two_ranks
    for config in configs:
        (epoch,) = ranks[0]["trained"][config]["history"]
        assert epoch["skipped_steps"] == 0 and np.isfinite(epoch["train_loss"])
        assert ranks[0]["trained"][config]["weights_agree"] and ranks[1]["trained"][config]["weights_agree"]
    left_out = re.findall(r"left out of DistributedDataParallel: (.+)", printed)
    assert len(left_out) == 3 and "mask_token" in left_out[0] and "pooler" in left_out[1] \
        and "head.norm" in left_out[2], left_out
    splits = list((Path(configs[0]).parent.parent / "models").rglob("split.csv"))
    assert len(splits) == 3
    for split in splits:  # two global batches of 8: two steps of 4 images per rank
        assert split.read_text().count(",train") // 8 == 2


def test_ctrl_c_on_one_rank_stops_both_with_a_checkpoint_that_resumes(tmp_path):
    """SIGINT to rank 1 alone: both ranks stop at the same step (rank 0 learns of it from the ranks'
    vote), rank 0 writes the checkpoint before either exits, and the printed command resumes it."""
    write_png_dataset(tmp_path / "data", np.random.default_rng(0).integers(0, 4, (64, 6)))
    write_config(tmp_path / "config" / "config.ini", tmp_path / "data",
                 Training={"n_epochs": 3, "batch_size": 4})
    ranks = Ranks([str(REPO / "main.py"), "--mode", "train"], tmp_path)
    ranks.wait_for(0, r"epoch 1/3 ")
    ranks.procs[1].send_signal(signal.SIGINT)
    (code0, output0), (code1, output1) = ranks.finish()
    assert code0 == code1 == 130, output0[-3000:] + output1[-3000:]
    assert "Traceback" not in output0 + output1
    (run_dir,) = (tmp_path / "models").iterdir()
    state = read_checkpoint(run_dir / "last_model.pth")
    assert (state["epoch"], state["next_batch"]) < (3, 0)  # stopped before the end
    (command,) = re.findall(r"Resume with: (.+)", output0)
    assert shlex.split(command) == ["python", "main.py", "--mode", "train", "--resume", str(run_dir)]
    assert "Resume with" not in output1  # said once, by rank 0

    # What that command runs, here in one process (it takes the same global batches as two).
    run_train(load_config(tmp_path / "config" / "config.ini", env={}), {"resume": str(run_dir)})
    epochs = [h["epoch"] for h in json.loads((run_dir / "logs" / "validation_history.json").read_text())]
    assert epochs == [1, 2, 3]


def _save_as_from_a_gpu(path: Path, state: dict) -> None:
    """save_checkpoint with every tensor storage tagged cuda:0, as a GPU run writes them (loading such
    a file without a map_location needs CUDA)."""
    def on_gpu(storage):
        return "cuda:0"

    entry = (0, on_gpu, lambda storage, location: None)  # first tagger; restores fall through to torch's
    torch.serialization._package_registry.insert(0, entry)
    try:
        save_checkpoint(path, state)
    finally:
        torch.serialization._package_registry.remove(entry)


def test_a_gpu_run_checkpoint_resumes_and_scores_on_a_machine_without_gpus(tmp_path, tiny_dataset):
    """A checkpoint as an 8-GPU fp16 run writes it: tensors on cuda:0, the GPU's random state and
    seven more listed (older checkpoints kept one per visible GPU), a gradient scaler's state, and
    a config naming cuda and fp16. Here it resumes, and predict and export read it."""
    path = write_config(tmp_path / "config" / "config.ini", tiny_dataset, Training={"n_epochs": 2})
    cfg = load_config(path, env={})

    def stop_after_epoch_1(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(cfg, on_epoch_end=stop_after_epoch_1)
    (run_dir,) = (tmp_path / "models").iterdir()
    for name in ("last_model.pth", "best_model.pth"):
        _save_as_from_a_gpu(run_dir / name, _as_from_a_gpu_run(read_checkpoint(run_dir / name)))
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(run_dir / "last_model.pth", weights_only=True)  # the file really is a GPU run's

    resumed = run_train(cfg, {"resume": str(run_dir)})  # as --mode train --resume does
    assert [h["epoch"] for h in json.loads((run_dir / "logs" / "validation_history.json").read_text())] == [1, 2]
    assert resumed.best_epoch in (1, 2)
    best = run_dir / "best_model.pth"
    _save_as_from_a_gpu(best, _as_from_a_gpu_run(read_checkpoint(best)))
    run_predict(cfg, {"input": str(tiny_dataset / "images"), "output": str(tmp_path / "scores.csv"),
                      "checkpoints": (str(best),), "runs": ()})
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == 1 + 24
    run_export(cfg, {"checkpoint": str(best), "format": "onnx"})
    assert (run_dir / "best_model.onnx").is_file()


def _as_from_a_gpu_run(state: dict) -> dict:
    """A checkpoint's content as an 8-GPU fp16 run would have written it."""
    state = {k: v for k, v in state.items() if k != "format"}
    state["rng"]["cuda"] = [list(range(16))] * 8
    state["scaler"] = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 7}
    for local, gpu in (("precision = fp32", "precision = fp16"), ("device = auto", "device = cuda")):
        assert local in state["config"] or gpu in state["config"]
        state["config"] = state["config"].replace(local, gpu)
    return state


class _RunsOutOfMemoryInChannelsLast(nn.Module):
    """A small CNN whose channels-last step fails as a GPU out of memory would (no GPU here)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 30),
                                 nn.Unflatten(1, (6, 5)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


def test_the_precision_probe_skips_a_candidate_that_runs_out_of_memory(log_messages):
    fp32, fp32_cl = Precision("fp32", False), Precision("fp32", True)
    images, targets = torch.randn(4, 2, 8, 8), torch.randint(0, 5, (4, 6))
    seconds = time_steps(_RunsOutOfMemoryInChannelsLast(), images, targets, torch.device("cpu"), [fp32_cl, fp32])
    assert list(seconds) == [fp32] and seconds[fp32] > 0
    (said,) = [m for m in log_messages if "runs out of memory" in m]
    assert "fp32 + channels_last" in said and "skipped" in said


def test_auto_prefers_bf16_to_fp16_unless_fp16_is_clearly_faster():
    fp32, bf16, fp16 = Precision("fp32", False), Precision("bf16", True), Precision("fp16", True)
    assert pick({fp32: 1.0, bf16: 0.50, fp16: 0.47}) == bf16  # 6% faster: not worth the scaler
    assert pick({fp32: 1.0, bf16: 0.50, fp16: 0.40}) == fp16
    assert pick({bf16: 0.50, fp16: 0.48}) == bf16  # fp32 ran out of memory: no choice
    assert pick({fp32: 1.0, fp16: 0.5}) == fp16  # a GPU without native bf16


def test_scaler_calibration_overflows_do_not_count_toward_divergence():
    guard = NonFiniteGuard(max_steps=2)
    for _ in range(20):  # GradScaler halving its first scale: losses finite, scaled gradients overflow
        guard.record(skipped=True, scaler_overflow=True, epoch=1)
    guard.record(skipped=False, scaler_overflow=False, epoch=1)
    guard.record(skipped=True, scaler_overflow=True, epoch=1)  # after calibration an overflow counts
    with pytest.raises(TrainingDiverged, match="2 steps in a row"):
        guard.record(skipped=True, scaler_overflow=False, epoch=1)  # a non-finite loss always counts


def test_sync_batchnorm_follows_the_batch_each_rank_gets():
    cnn, vit = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), nn.Sequential(nn.LayerNorm(4))
    gpu, cpu, two = torch.device("cuda", 0), torch.device("cpu"), DistInfo(0, 2, 0)
    assert use_sync_batchnorm("auto", cnn, two, gpu, batch_size=16)  # 8 per rank
    assert not use_sync_batchnorm("auto", cnn, two, gpu, batch_size=32)  # 16 per rank
    assert not use_sync_batchnorm("auto", vit, two, gpu, batch_size=2)  # no BatchNorm
    assert not use_sync_batchnorm("true", cnn, DistInfo(), gpu, batch_size=2)  # one process
    assert not use_sync_batchnorm("auto", cnn, two, cpu, batch_size=2)
    with pytest.raises(ConfigError, match="sync_batchnorm = true: SyncBatchNorm needs CUDA"):
        use_sync_batchnorm("true", cnn, two, cpu, batch_size=2)


def test_searches_run_one_process_per_gpu(monkeypatch):
    """Threads are refused where trials would train on a GPU (the rule, given a CUDA device: no GPU
    here to run a study on), not on CPU cores; a search under torchrun is refused anywhere."""
    cfg = apply_overrides(load_config(None, env={}), {"Hyperopt.n_jobs": 2, "Training.device": "cpu"})
    require_worker_processes(cfg, "hyperopt")  # threads on CPU cores are fine
    with pytest.raises(ConfigError, match=r"n_jobs = 2: trials in threads would share one GPU.*gpu_workers.sh"):
        require_worker_processes(cfg, "hyperopt", torch.device("cuda"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="not under torchrun.*scripts/gpu_workers.sh"):
        require_worker_processes(cfg, "hyperopt")


def test_gpu_workers_script_gives_each_worker_one_gpu(tmp_path):
    script = REPO / "scripts" / "gpu_workers.sh"
    done = subprocess.run([str(script), sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"],
                          cwd=tmp_path, env={**os.environ, "GPUS": "0,3"}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert [(tmp_path / "logs" / f"gpu_worker_{k}.log").read_text() for k in (0, 3)] == ["0\n", "3\n"]
    failing = subprocess.run([str(script), "sh", "-c", "exit $CUDA_VISIBLE_DEVICES"], cwd=tmp_path,
                             env={**os.environ, "GPUS": "0,3"}, capture_output=True, text=True, timeout=60)
    assert failing.returncode == 3  # a worker's failure is the script's


class _HostReads(TorchDispatchMode):
    """Counts the operations that read a tensor's value on the host (item(), bool(), float(), a
    nonzero's size): on a GPU each one waits for the device to finish everything queued before it."""

    READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default)

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in self.READS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("optimizer, reads_per_step", [("adam", 0), ("sgd", 1)])
def test_a_training_step_reads_nothing_on_the_host_but_sgds_skip_decision(optimizer, reads_per_step):
    """Host reads per optimizer step, with clipping and accumulation: none with fused Adam, which
    skips on the device; SGD's one, its skip decision. (What a CPU cannot show: host-to-device copies
    and reads inside CUDA kernels. A GPU check counts those with torch.cuda.set_sync_debug_mode.)"""
    def reads(batches: int) -> int:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                              nn.Linear(16, 30), nn.Unflatten(1, (6, 5)))
        step = (torch.optim.Adam(model.parameters(), fused=True) if optimizer == "adam"
                else torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
        data = [(torch.rand(2, 1, 8, 8), torch.randint(0, 5, (2, 6)), ["a", "b"]) for _ in range(batches)]
        with _HostReads() as counter:
            train_epoch(model, data, WeightedCSILoss(), step, torch.device("cpu"), 1,
                        LoopSettings(progress=False, max_grad_norm=1.0, grad_accumulation=2))
        return counter.count

    assert reads(12) - reads(4) == reads_per_step * (12 - 4) // 2
