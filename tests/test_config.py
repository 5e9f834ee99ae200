"""The config schema and loader: precedence, case-insensitivity and every error path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from src.config.loader import apply_overrides, get_value, load_config
from src.config.render import SHIPPED_HEADER, render_ini
from src.config.schema import Config, all_keys, section_fields
from src.utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.ini"
    path.write_text(text)
    return path


def test_defaults_come_from_the_schema(tmp_path):
    cfg = load_config(write(tmp_path, ""), env={})
    assert cfg == Config()
    assert cfg.training.batch_size == 32 and cfg.loss.unknown_weight == 0.3
    assert (cfg.data.train_fraction, cfg.data.val_fraction, cfg.data.test_fraction) == (0.70, 0.15, 0.15)


def test_legacy_upper_case_file_loads(tmp_path):
    cfg = load_config(write(tmp_path, "[TRAINING]\nBATCH_SIZE = 16\n[Model]\nMODEL_ARCH = Custom_1\n"), env={})
    assert cfg.training.batch_size == 16
    assert cfg.model.model_arch == "custom_cnn"  # alias resolved, case ignored


def test_model_arch_takes_timm_and_hf_names_keeping_their_case(tmp_path):
    cfg = load_config(write(tmp_path, "[Model]\nmodel_arch = HF:Microsoft/Rad-DINO\n"), env={})
    assert cfg.model.model_arch == "hf:Microsoft/Rad-DINO"
    assert load_config(write(tmp_path, "[Model]\nmodel_arch = timm:resnet18.a1_in1k\n"), env={}).model.model_arch \
        == "timm:resnet18.a1_in1k"
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "[Model]\nmodel_arch = timm:\n"), env={})
    assert "\n" not in str(error.value)
    assert "raddino" in str(error.value) and "timm:<name>, hf:<name>" in str(error.value)


def test_precedence_flag_over_set_over_env_over_file(tmp_path):
    path = write(tmp_path, "[Training]\nbatch_size = 4\nn_epochs = 3\nseed = 5\n")
    env = {"CSI_TRAINING_BATCH_SIZE": "8", "CSI_TRAINING_N_EPOCHS": "9", "UNRELATED": "x"}
    cfg = load_config(path, ["Training.n_epochs=11"], env=env, cli={"Training.seed": 7})
    assert cfg.training.batch_size == 8  # env beats file
    assert cfg.training.n_epochs == 11  # --set beats env
    assert cfg.training.seed == 7  # flag beats file
    cfg = load_config(path, ["Training.seed=1"], env={}, cli={"Training.seed": 2})
    assert cfg.training.seed == 2  # flag beats --set


def test_extended_interpolation(tmp_path):
    cfg = load_config(write(tmp_path, "[Data]\nimage_dir = /x/images\ncache_dir = ${image_dir}/../cache\n"), env={})
    assert cfg.data.cache_dir == "/x/images/../cache"


@pytest.mark.parametrize("text, expected", [
    ("[Trainig]\nbatch_size = 1\n", ["unknown section [Trainig]", "did you mean 'Training'"]),
    ("[Training]\nbatch_sise = 1\n", ["unknown key 'batch_sise'", "did you mean 'batch_size'"]),
    ("[Training]\nbatch_size = -1\n", ["[Training] batch_size", "'-1'", "an integer >= 1"]),
    ("[Training]\nbatch_size = 3.5\n", ["batch_size", "an integer"]),
    ("[Training]\nlearning_rate = abc\n", ["learning_rate", "'abc'", "a number > 0"]),
    ("[Training]\nlearning_rate = 0\n", ["learning_rate", "> 0"]),
    ("[Training]\npin_memory = maybe\n", ["pin_memory", "true or false"]),
    ("[Training]\ndevice = gpu\n", ["device", "auto, cpu, cuda, cuda:N or mps"]),
    ("[Model]\nmodel_arch = resnet5O\n", ["model_arch", "one of resnet50", "did you mean 'resnet50'"]),
    ("[Data]\ntrain_fraction = 0.8\n", ["train_fraction + val_fraction + test_fraction = 1.1", "sum to 1"]),
    ("[Evaluation]\nahf_low_threshold = 2.5\n", ["ahf_low_threshold must be below"]),
    ("[Training]\nbatch_size = 1\n[training]\nseed = 1\n", ["appears twice"]),
    ("[Training]\nbatch_size = 1\nbatch_size = 2\n", ["not a valid INI file"]),
    ("no section header\n", ["not a valid INI file"]),
    ("[Data]\nimage_dir = ${missing}\n", ["image_dir"]),
])
def test_bad_file_errors_name_file_key_and_allowed(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    for fragment in expected:
        assert fragment in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.ini", env={})


@pytest.mark.parametrize("override, expected", [
    ("Training.batch_size=0", "--set Training.batch_size"),
    ("Training.batch_size", "expected Section.key=value"),
    ("Trainig.batch_size=2", "did you mean 'Training'"),
    ("Training.nope=2", "unknown key 'nope'"),
])
def test_bad_set(tmp_path, override, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load_config(write(tmp_path, ""), [override], env={})


def test_bad_environment_variable(tmp_path):
    with pytest.raises(ConfigError, match="environment variable CSI_TRAINING_BATCH_SIZ"):
        load_config(write(tmp_path, ""), env={"CSI_TRAINING_BATCH_SIZ": "3"})
    with pytest.raises(ConfigError, match="CSI_TRAINING_SEED.*an integer"):
        load_config(write(tmp_path, ""), env={"CSI_TRAINING_SEED": "x"})


def test_apply_overrides_validates_and_copies():
    cfg = Config()
    new = apply_overrides(cfg, {"Training.learning_rate": 0.01, "Model.model_arch": "custom_1"})
    assert (new.training.learning_rate, new.model.model_arch) == (0.01, "custom_cnn")
    assert cfg.training.learning_rate == 0.001
    assert get_value(new, "training.learning_rate") == 0.01
    with pytest.raises(ConfigError, match="batch_size"):
        apply_overrides(cfg, {"Training.batch_size": 2.5})


def test_rendered_ini_round_trips(tmp_path):
    cfg = apply_overrides(Config(), {"Data.image_dir": "a$b", "Training.seed": 3, "Loss.unknown_weight": 0.25})
    path = write(tmp_path, render_ini(cfg, "header"))
    assert load_config(path, env={}) == cfg


def test_every_key_has_help_and_a_valid_default():
    for dotted in all_keys():
        section, name = dotted.split(".")
        fld = section_fields(section)[name]
        assert fld.metadata["help"].strip(), dotted
        assert fld.default is not dataclasses.MISSING
    assert apply_overrides(Config(), {}) == Config()


def test_shipped_config_documents_every_key_and_is_in_sync():
    path = REPO / "config" / "config.ini"
    cfg = load_config(path, env={})
    assert path.read_text() == render_ini(cfg, SHIPPED_HEADER), "run scripts/update_config.py"
    text = path.read_text().lower()
    for dotted in all_keys():
        if dotted != "Hyperopt.search_space":
            assert f"\n{dotted.split('.')[1]} = " in text, dotted
    for searched, spec in cfg.hyperopt.search_space:
        assert f"\n{searched} = {spec}".lower() in text


def test_search_space_lines_replace_the_default(tmp_path):
    path = write(tmp_path, "[Hyperopt]\nn_trials = 3\nTRAINING.Learning_Rate = loguniform(1e-4, 1e-2)\n")
    cfg = load_config(path, env={})
    assert cfg.hyperopt.search_space == (("Training.learning_rate", "loguniform(1e-4, 1e-2)"),)
    cfg = load_config(path, ["Hyperopt.Model.dropout=uniform(0.1, 0.5)"], env={})
    assert dict(cfg.hyperopt.search_space) == {"Training.learning_rate": "loguniform(1e-4, 1e-2)",
                                               "Model.dropout": "uniform(0.1, 0.5)"}
    assert load_config(write(tmp_path, ""), env={}).hyperopt.search_space == Config().hyperopt.search_space
    assert apply_overrides(cfg, {"Training.seed": 1}).hyperopt.search_space == cfg.hyperopt.search_space


@pytest.mark.parametrize("line, expected", [
    ("Training.learnin_rate = uniform(0, 1)", "did you mean 'learning_rate'"),
    ("Trainng.learning_rate = uniform(0, 1)", "did you mean 'Training'"),
    ("Hyperopt.n_trials = int(1, 5)", "cannot be searched"),
])
def test_search_space_keys_must_exist(tmp_path, line, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, f"[Hyperopt]\n{line}\n"), env={})
