"""hyperopt and train-optimized: real Optuna storages (journal file, PostgreSQL), real `main.py` processes."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from src.cli.hyperopt import run_hyperopt, run_train_optimized
from src.config.loader import get_value, load_config
from src.config.schema import Config, HyperoptConfig
from src.optimization.runner import run_study
from src.optimization.search_space import grid, parse_space, parse_spec, suggest
from src.optimization.study import TrialSeededSampler, make_pruner, make_sampler
from src.utils.errors import ConfigError
from tests.conftest import REPO, finish, run_main, start_main, write_config

SPACE = {"Training.learning_rate": "loguniform(1e-4, 1e-2)", "Model.dropout": "uniform(0.1, 0.5)",
         "Training.batch_size": "choice(4, 8)"}
BEST_PARAMS_KEYS = {"study_name", "metric", "direction", "best_value", "best_trial", "best_params",
                    "n_complete", "n_pruned", "n_failed"}


def make_project(root: Path, data: Path, space: dict = SPACE, **hyperopt) -> Path:
    """A working directory with config/config.ini: tiny CNN, fp32 (fastest on small CPUs), 2-epoch trials."""
    write_config(root / "config" / "config.ini", data, Training={"precision": "fp32"},
                 Hyperopt={**space, "max_epochs": 2, **hyperopt})
    return root


def stored_study(root: Path, name: str) -> optuna.Study:
    journal = root / "logs" / "hyperopt" / f"{name}.log"
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(journal))))


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, data_dir):
    """One 6-trial study with an aggressive pruner on val_loss, logged to W&B offline."""
    root = make_project(tmp_path_factory.mktemp("study"), data_dir, study_name="hp",
                        pruner="successive_halving", metric="val_loss", direction="minimize")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(root / "wandb"), "WANDB_SILENT": "true"}
    (root / "wandb").mkdir()
    result = run_main("--mode", "hyperopt", "--n-trials", "6", "--wandb-project", "csi-test", cwd=root,
                      env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


def test_six_trial_study_completes(study_run):
    root, result = study_run
    trials = stored_study(root, "hp").trials
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    for t in trials:  # a live line per trial, then the summary table on stdout
        assert f"trial {t.number} " in result.stderr
    assert "Study hp: 6 trials" in result.stdout
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert f"Best val_loss {best.value:.4f} in trial {best.number}" in result.stdout


def test_aggressive_pruner_prunes_a_trial(study_run):
    root, _ = study_run
    trials = stored_study(root, "hp").trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned
    assert all(len(t.intermediate_values) < 2 for t in pruned)  # stopped before max_epochs
    assert all(len(t.intermediate_values) == 2 for t in trials if t.state == TrialState.COMPLETE)


def test_study_outputs(study_run):
    root, _ = study_run
    study = stored_study(root, "hp")
    out = root / "models" / "hyperopt" / "hp"
    payload = json.loads((out / "best_params.json").read_text())
    assert set(payload) == BEST_PARAMS_KEYS
    assert payload["best_trial"] == study.best_trial.number and payload["best_value"] == study.best_value
    assert payload["best_params"] == study.best_trial.params and set(payload["best_params"]) == set(SPACE)
    assert (payload["metric"], payload["direction"]) == ("val_loss", "minimize")
    states = [t.state for t in study.trials]
    assert (payload["n_complete"], payload["n_pruned"], payload["n_failed"]) == (
        states.count(TrialState.COMPLETE), states.count(TrialState.PRUNED), 0)

    table = (out / "trials.csv").read_text().splitlines()
    assert len(table) == 7 and all(name in table[0] for name in SPACE)
    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 'src="plotly.min.js"' in (out / f"{name}.html").read_text()
    assert (out / "plotly.min.js").stat().st_size > 1_000_000  # the HTML plots work offline

    runs = {t.number: Path(t.user_attrs["run_dir"]) for t in study.trials}
    assert all((run / "config.ini").is_file() for run in runs.values())
    kept = {n for n, run in runs.items() if list(run.glob("*.pth"))}
    assert kept == {study.best_trial.number}  # only the best trial keeps its checkpoints


def test_each_trial_is_a_wandb_run(study_run):
    root, _ = study_run
    run_files = [p.read_bytes() for p in (root / "wandb" / "wandb").glob("offline-run-*/run-*.wandb")]
    trials = stored_study(root, "hp").trials
    assert len(run_files) == len(trials)
    for t in trials:
        (content,) = [c for c in run_files if f"hp-trial{t.number}".encode() in c]
        outcome = "pruned" if t.state == TrialState.PRUNED else "complete"
        assert f'"{outcome}"'.encode() in content and b"val/loss" in content  # per-epoch metrics


def test_best_params_round_trip_into_train_optimized(study_run):
    root, _ = study_run
    best = root / "models" / "hyperopt" / "hp" / "best_params.json"
    result = run_main("--mode", "train-optimized", "--hyperparams", str(best), "--epochs", "1", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (root / "models").glob("*_custom_cnn_run")
    config_text = (run / "config.ini").read_text()
    cfg = load_config(run / "config.ini", env={})
    for key, value in json.loads(best.read_text())["best_params"].items():
        assert get_value(cfg, key) == value
        assert f"#   {key} = {value}" in config_text  # the header says where each value came from
    assert "study hp (trial" in config_text
    assert cfg.training.n_epochs == 1  # the full [Training] budget, not the trials' max_epochs


def test_train_optimized_takes_best_trial_from_the_store(study_run, monkeypatch):
    root, _ = study_run
    monkeypatch.chdir(root)
    cfg = load_config("config/config.ini", ["Hyperopt.study_name=hp", "Training.n_epochs=1",
                                            "Training.run_name=from_store"], env={})
    result = run_train_optimized(cfg, {"hyperparams": None})
    best = stored_study(root, "hp").best_trial
    trained = load_config(result.run_dir / "config.ini", env={})
    assert all(get_value(trained, key) == value for key, value in best.params.items())
    assert f"study hp (trial {best.number}" in (result.run_dir / "config.ini").read_text()


def test_train_optimized_rejects_a_key_that_no_longer_exists(tmp_path, data_dir):
    cfg = load_config(write_config(tmp_path / "config" / "config.ini", data_dir), env={})
    stale = tmp_path / "best_params.json"
    stale.write_text(json.dumps({"study_name": "old",
                                 "best_params": {"Model.dropout": 0.2, "Model.drop_path": 0.1}}))
    with pytest.raises(ConfigError, match="Model.drop_path"):
        run_train_optimized(cfg, {"hyperparams": str(stale)})
    assert not (tmp_path / "models").exists()  # refused before training


def _retried(trial) -> int | None:
    return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_killed_study_continues_with_two_workers(tmp_path, data_dir):
    """Kill a worker mid-trial; the same command started twice finishes the study without loss or repeat."""
    root = make_project(tmp_path, data_dir, study_name="killed", pruner="none")
    worker = start_main("--mode", "hyperopt", "--n-trials", "6", cwd=root)
    journal = root / "logs" / "hyperopt" / "killed.log"
    while True:  # kill it while it trains its second trial (a worker that ended first fails the test)
        assert worker.poll() is None
        trials = stored_study(root, "killed").trials if journal.exists() else []
        running = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
        if any(t.state == TrialState.COMPLETE for t in trials) and running:
            break
        time.sleep(0.5)
    worker.kill()
    worker.wait()
    before = stored_study(root, "killed").trials
    killed = [t for t in before if t.state == TrialState.RUNNING]

    finish([start_main("--mode", "hyperopt", "--n-trials", "2", cwd=root) for _ in range(2)])
    after = stored_study(root, "killed").trials
    assert [t.number for t in after] == list(range(len(before) + 4))
    for old, new in zip(before, after):  # finished trials are intact, the killed one failed
        if old.state == TrialState.RUNNING:
            assert new.state == TrialState.FAIL
        else:
            assert (new.state, new.value, new.params) == (old.state, old.value, old.params)
    added = after[len(before):]
    assert all(t.state == TrialState.COMPLETE for t in added)
    retries = [t for t in added if _retried(t) is not None]
    assert [_retried(t) for t in retries] == [t.number for t in killed]  # run again once, not by both
    assert [r.params for r in retries] == [t.params for t in killed]
    assert len({t.user_attrs["worker"] for t in added}) == 2  # both workers ran trials
    params = [tuple(sorted(t.params.items())) for t in before + [t for t in added if t not in retries]]
    assert len(set(params)) == len(params)  # no new trial replays another


def test_two_workers_share_one_postgresql_study(tmp_path, data_dir, postgres_url):
    root = make_project(tmp_path, data_dir, study_name="pg", pruner="none", max_epochs=1)
    finish([start_main("--mode", "hyperopt", "--n-trials", "2", "--storage", postgres_url, cwd=root)
            for _ in range(2)])
    # the test process has psycopg2 (the dev extra), which SQLAlchemy uses when named
    storage = postgres_url.replace("postgresql://", "postgresql+psycopg2://")
    trials = optuna.load_study(study_name="pg", storage=storage).trials
    assert sorted(t.number for t in trials) == list(range(4))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # no trial duplicated another
    assert not (root / "logs" / "hyperopt" / "pg.log").exists()


def test_failed_trial_does_not_stop_the_study(tmp_path, data_dir, monkeypatch):
    root = make_project(tmp_path, data_dir, space={"Training.learning_rate": "choice(1e30, 0.001)"},
                        study_name="diverge", sampler="grid", n_trials=2, max_epochs=1)
    monkeypatch.chdir(root)
    cfg = load_config("config/config.ini", ["Optimization.optimizer=sgd", "Training.max_nonfinite_steps=1"],
                      env={})
    study = run_hyperopt(cfg, {})
    by_lr = {t.params["Training.learning_rate"]: t for t in study.trials}
    assert by_lr[1e30].state == TrialState.FAIL and "diverged" in by_lr[1e30].user_attrs["fail_reason"]
    assert by_lr[0.001].state == TrialState.COMPLETE


def test_bad_search_space_fails_before_the_first_trial(tmp_path, data_dir, monkeypatch):
    root = make_project(tmp_path, data_dir, space={**SPACE, "Model.dropout": "uniform(0.1, 1.5)"})
    monkeypatch.chdir(root)
    with pytest.raises(ConfigError, match=r"Model.dropout = uniform\(0.1, 1.5\).*0.95"):
        run_hyperopt(load_config("config/config.ini", env={}), {})
    assert not (root / "logs" / "hyperopt").exists()  # nothing stored, nothing trained
    assert not (root / "models").exists()


@pytest.mark.parametrize("key, spec, message", [
    ("Model.dropout", "uniform(0.1, 1.5)", "<= 0.95"),
    ("Training.batch_size", "uniform(8, 64)", "int\\(a, b\\)"),
    ("Model.model_arch", "choice(resnet50, vgg16)", "vgg16"),
    ("Model.model_arch", "uniform(0, 1)", "one of resnet50"),
    ("Training.learning_rate", "loguniform(0, 0.1)", "above 0"),
    ("Training.learning_rate", "uniform(0.1, 0.01)", "below the upper"),
    ("Training.learning_rate", "normal(0, 1)", "unknown function 'normal'"),
    ("Training.learning_rate", "0.001", "expected loguniform"),
    ("Model.dropout", "uniform(low, high)", "numbers"),
    ("Training.batch_size", "int(8, 64, 10)", "step"),
    ("Training.batch_size", "choice(8, 8)", "twice"),
    ("Training.batch_size", "choice(8, )", "empty"),
    ("Training.n_epochs", "int(1, 5)", "max_epochs"),
    ("Model.drop_rate", "uniform(0.1, 0.5)", "did you mean 'dropout'"),
])
def test_bad_spec_names_key_and_spec(key, spec, message):
    with pytest.raises(ConfigError, match=message) as error:
        parse_spec(Config(), key, spec)
    assert spec in str(error.value)


def test_specs_become_typed_distributions():
    cfg = Config()
    assert parse_spec(cfg, "Training.batch_size", "choice(8, 16)") == CategoricalDistribution([8, 16])
    assert parse_spec(cfg, "Model.model_arch", "choice(custom_1, chexnet)") == CategoricalDistribution(
        ["custom_cnn", "chexnet"])  # aliases resolve as in the INI
    assert parse_spec(cfg, "Model.pretrained", "choice(true, false)") == CategoricalDistribution(
        [True, False])
    assert parse_spec(cfg, "Training.learning_rate", "loguniform(1e-5, 1e-2)") == FloatDistribution(
        1e-5, 1e-2, log=True)
    assert parse_spec(cfg, "Model.dropout", "uniform(0.1, 0.5, 0.1)") == FloatDistribution(0.1, 0.5, step=0.1)
    assert parse_spec(cfg, "Data.image_size", "int(64, 256, 64)") == IntDistribution(64, 256, step=64)
    space = {"Data.image_size": IntDistribution(64, 256, step=64),
             "Model.pretrained": CategoricalDistribution([True, False]),
             "Model.dropout": FloatDistribution(0.1, 0.3, step=0.1)}
    assert grid(space) == {"Data.image_size": [64, 128, 192, 256], "Model.pretrained": [True, False],
                           "Model.dropout": pytest.approx([0.1, 0.2, 0.3])}
    with pytest.raises(ConfigError, match="Training.learning_rate"):
        grid({"Training.learning_rate": FloatDistribution(1e-5, 1e-2, log=True)})


def test_sampler_is_reproducible_and_never_replays():
    def run(storage, name: str, n: int) -> list[float]:
        """What one process does: join the stored study with its own sampler, run n trials."""
        sampler = TrialSeededSampler(lambda seed: optuna.samplers.RandomSampler(seed=seed), seed=7)
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, load_if_exists=True)
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=n)
        return [t.params["x"] for t in study.trials[-n:]]

    storage = optuna.storages.InMemoryStorage()
    resumed = run(storage, "a", 3) + run(storage, "a", 3)
    assert len(set(resumed)) == 6  # the second run does not repeat the first one's draws
    assert run(storage, "b", 6) == resumed  # same seed, same trial numbers: same values


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "gp", "grid", "qmc"])
def test_every_sampler_searches_the_space(sampler):
    space_lines = (("Model.dropout", "uniform(0.1, 0.5, 0.1)"), ("Training.batch_size", "choice(4, 8)"))
    cfg = Config(hyperopt=HyperoptConfig(sampler=sampler, search_space=space_lines))
    space = parse_space(cfg)
    study = optuna.create_study(sampler=make_sampler(cfg, space), pruner=make_pruner(cfg.hyperopt))
    study.optimize(lambda trial: suggest(trial, space)["Model.dropout"], n_trials=4)
    for t in study.trials:
        assert t.state == TrialState.COMPLETE and set(t.params) == set(space)
        assert t.params["Training.batch_size"] in (4, 8) and 0.1 <= t.params["Model.dropout"] <= 0.5


def test_hyperopt_cli_is_a_thin_shell_over_the_runner(tmp_path, data_dir, monkeypatch):
    """A notebook or a sweep backend runs a study through run_study with its own space, sampler and hooks."""
    root = make_project(tmp_path, data_dir, study_name="nb", max_epochs=1, n_trials=2)
    monkeypatch.chdir(root)
    cfg = load_config("config/config.ini", env={})
    space = {"Model.dropout": CategoricalDistribution([0.1, 0.3])}

    def suggest_params(trial) -> dict:
        return {**suggest(trial, space), "Training.learning_rate": 0.002}

    finished = []
    outcome = run_study(cfg, space=space, sampler=optuna.samplers.GridSampler({"Model.dropout": [0.1, 0.3]}),
                        pruner=optuna.pruners.NopPruner(), suggest_params=suggest_params,
                        callbacks=[lambda study, trial: finished.append(trial.number)])
    trials = outcome.study.trials
    assert finished == [0, 1] and not outcome.interrupted
    assert sorted(t.params["Model.dropout"] for t in trials) == [0.1, 0.3]
    assert outcome.best_params["best_trial"] == outcome.study.best_trial.number
    assert (outcome.report_dir / "best_params.json").is_file() and (outcome.report_dir / "trials.csv").is_file()
    for t in trials:  # each trial trained with its values and the hook's fixed one, in its recorded run
        trained = load_config(Path(t.user_attrs["run_dir"]) / "config.ini", env={})
        assert (trained.model.dropout, trained.training.learning_rate) == (t.params["Model.dropout"], 0.002)

    # The CLI holds no search logic: from src/optimization it takes the runner, the summary and a path.
    tree = ast.parse((REPO / "src" / "cli" / "hyperopt.py").read_text())
    imported = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names if node.module.startswith("src.optimization")}
    assert imported == {("src.optimization.runner", "run_study"), ("src.optimization.runner", "train_best"),
                        ("src.optimization.report", "summary"), ("src.optimization.study", "display_location")}
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "optimize"]
