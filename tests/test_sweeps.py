"""W&B sweeps: the sweep file checked against W&B's spec and the schema, every distribution sampled
on Optuna, W&B's hyperband rule, the local backend end to end (real agents as processes, journal
and PostgreSQL storages), and the wandb backend's run process started by W&B's own agent code,
logging to an offline W&B run."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState
from scipy import stats

from src.config.loader import get_value, load_config
from src.config.schema import Config
from src.optimization.runner import train_best
from src.sweeps.agent import run_agent
from src.sweeps.distributions import infer_distribution, ppf, suggest
from src.sweeps.hyperband import should_stop
from src.sweeps.local import SPEC_ATTR, create_sweep, open_sweep
from src.sweeps.spec import Hyperband, hyperband_bands, parse_sweep
from src.sweeps.wandb_backend import collect_wandb_runs, sweep_config, train_wandb_run
from src.utils.errors import ConfigError
from tests.conftest import REPO, finish, run_main, start_main, write_config

GRID = """
method: grid
metric: {name: val_loss, goal: minimize}
parameters:
  learning_rate: {values: [0.001, 0.003]}
  Model:
    parameters:
      dropout: {values: [0.2, 0.4]}
"""


def make_project(root: Path, data: Path, sweep: str = GRID, **training) -> Path:
    """config/config.ini (tiny CNN, fp32, 2 epochs) and sweep.yaml in `root`."""
    write_config(root / "config" / "config.ini", data, Training={"precision": "fp32", **training})
    (root / "sweep.yaml").write_text(sweep)
    return root


def stored(root: Path, sweep_id: str, storage: str = "") -> tuple[optuna.Study, object]:
    """The sweep as its agents stored it (a PostgreSQL URL goes through psycopg2, the dev extra's driver)."""
    overrides = [f"Hyperopt.storage={storage.replace('postgresql://', 'postgresql+psycopg2://')}"] if storage else []
    study, spec, _ = open_sweep(load_config(root / "config" / "config.ini", overrides, env={}), sweep_id)
    return study, spec


def check_runs_got_their_values(study: optuna.Study) -> None:
    """Each run's config.ini holds the values its trial was given, and records where they came from."""
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        run_cfg = load_config(Path(t.user_attrs["run_dir"]) / "config.ini", env={})
        for key, value in t.user_attrs["config"].items():
            assert get_value(run_cfg, key) == value
        assert f"Sweep {study.study_name}, run{t.number}:" in (Path(t.user_attrs["run_dir"]) / "config.ini").read_text()


# --- the sweep file -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, culprit", [
    ("parameters: {learning_rate: {values: [0.1]}}", "method is missing"),
    ("method: hyper\nparameters: {dropout: {value: 0.3}}", "method = 'hyper'"),
    ("method: random\nparameters: {learnin_rate: {values: [0.1]}}", "learnin_rate.*did you mean 'learning_rate'"),
    ("method: random\nparameters: {batch_size: {values: [8]}}", "batch_size: ambiguous.*Training.batch_size"),
    ("method: random\nparameters: {Training.batch_sise: {values: [8]}}", "batch_sise.*did you mean 'batch_size'"),
    ("method: random\nparameters: {Hyperopt.n_trials: {values: [8]}}", "Hyperopt.*cannot be swept"),
    ("method: random\nmetric: {name: val_f1_macr}\nparameters: {dropout: {value: 0.3}}",
     "val_f1_macr.*did you mean 'val_f1_macro'"),
    ("method: random\nmetric: {name: val_loss, goal: lower}\nparameters: {dropout: {value: 0.3}}", "goal = 'lower'"),
    ("method: bayes\nparameters: {dropout: {min: 0.1, max: 0.5}}", "bayes learns from a metric"),
    ("method: grid\nparameters: {learning_rate: {min: 0.001, max: 0.01}}", "learning_rate: uniform is not discrete"),
    ("method: grid\nparameters: {dropout: {values: [0.1, 0.2], probabilities: [0.5, 0.5]}}",
     "categorical_w_probabilities is not discrete"),
    ("method: random\nparameters: {dropout: {min: 0.1, max: 1.5}}", "can yield 1.5.*<= 0.95"),
    ("method: random\nparameters: {dropout: {min: 0.5, max: 0.1}}", "min 0.5 is not below max 0.1"),
    ("method: random\nparameters: {optimizer: {values: [adam, sgdd]}}", "'sgdd'.*did you mean 'sgd'"),
    ("method: random\nparameters: {optimizer: {distribution: uniform, min: 0, max: 1}}", "yields numbers"),
    ("method: random\nparameters: {Training.batch_size: {min: 8.0, max: 32.0}}", "yields non-integers"),
    ("method: random\nparameters: {learning_rate: {distribution: log_uniform_values, min: 0, max: 0.1}}",
     "min must be above 0"),
    ("method: random\nparameters: {dropout: {distribution: gaussian}}", "unknown distribution 'gaussian'"),
    ("method: random\nparameters: {dropout: {distribution: normal, sigma: -1}}", "sigma must be above 0"),
    ("method: random\nparameters: {dropout: {distribution: beta, mu: 1}}", "beta takes a, b, not 'mu'"),
    ("method: random\nparameters: {dropout: {values: [0.1, 0.2], probabilities: [0.5, 0.6]}}", "sum to 1.1"),
    ("method: random\nparameters: {dropout: {values: [0.1, 0.1]}}", "appears twice"),
    ("method: random\nparameters: {dropout: {min: 0.1}}", "give value, values, min and max"),
    ("method: random\nparameters: {dropout: 0.3}", "expected a mapping"),
    ("method: random\nparameters: {Modl: {parameters: {dropout: {value: 0.3}}}}", "did you mean 'Model'"),
    ("method: random\nparameters: {learning_rate: {value: 0.1}, Training: {parameters: {learning_rate: "
     "{value: 0.2}}}}", "both set Training.learning_rate"),
    ("method: random\nrun_cap: 0\nparameters: {dropout: {value: 0.3}}", "run_cap = 0"),
    ("method: random\nmetric: {name: val_loss}\nearly_terminate: {type: hyperband, max_iter: 27}\n"
     "parameters: {dropout: {value: 0.3}}", "max_iter needs s"),
    ("method: random\nmetric: {name: val_loss}\nearly_terminate: {type: hyperband, min_iter: 1, eta: 1}\n"
     "parameters: {dropout: {value: 0.3}}", "eta = 1"),
    ("method: random\nmetric: {name: val_loss}\nearly_terminate: {type: median, min_iter: 1}\n"
     "parameters: {dropout: {value: 0.3}}", "expected hyperband"),
    ("method: random\nearly_terminate: {type: hyperband, min_iter: 1}\nparameters: {dropout: {value: 0.3}}",
     "hyperband needs a metric"),
    ("method: random\nmetric: {name: val_loss, impute: worst}\nparameters: {dropout: {value: 0.3}}",
     "unknown key 'impute'"),
    ("method: random\nparameter: {dropout: {value: 0.3}}", "unknown key 'parameter'.*did you mean 'parameters'"),
    ("method: [random\n", "not valid YAML"),
])
def test_bad_sweep_file_names_file_and_culprit(text, culprit):
    with pytest.raises(ConfigError, match=culprit) as error:
        parse_sweep(text, "sweep.yaml", Config())
    message = str(error.value)
    assert message.startswith("sweep.yaml:") and "\n" not in message


def test_names_map_onto_config_keys_and_types_are_inferred():
    spec = parse_sweep("""
method: random
metric: {name: val_qwk, goal: maximize, target: 0.9}
parameters:
  learning_rate: {min: 0.0001, max: 0.1}
  Training.batch_size: {min: 8, max: 32}
  MODEL_ARCH: {value: custom_1}
  Optimization:
    parameters:
      optimizer: {values: [adam, sgd]}
early_terminate: {type: hyperband, max_iter: 27, s: 2, eta: 3, strict: false}
run_cap: 7
""", "s.yaml", Config())
    assert [(p.name, p.key, p.distribution) for p in spec.params] == [
        ("learning_rate", "Training.learning_rate", "uniform"),
        ("Training.batch_size", "Training.batch_size", "int_uniform"),
        ("MODEL_ARCH", "Model.model_arch", "constant"),
        ("Optimization.optimizer", "Optimization.optimizer", "categorical")]
    assert (spec.metric, spec.direction, spec.target, spec.run_cap) == ("val_qwk", "maximize", 0.9, 7)
    assert spec.hyperband == Hyperband(bands=(3, 9), eta=3.0, strict=False)


def test_hyperband_bands_and_rule_follow_wandb():
    assert hyperband_bands({"max_iter": 81, "s": 3, "eta": 3}, "x") == (3, 9, 27)
    assert hyperband_bands({"max_iter": 5, "s": 2, "eta": 2}, "x") == (1, 2)
    assert hyperband_bands({"min_iter": 2, "eta": 3}, "x")[:4] == (2, 6, 18, 54)
    # W&B's own example (losses): at band 2 the threshold is the median of [9, 10, 8, 7, 6] = 8.
    histories = [[10, 9], [10, 10], [10, 8, 8], [10, 7, 7], [10, 6, 6]]
    strict = Hyperband(bands=(1, 2), eta=2.0, strict=True)
    assert should_stop([10, 10], histories, strict) == (True, 2, 8)
    assert should_stop([10, 8, 8], histories, strict)[0] is False  # not worse than the threshold
    assert should_stop([10], histories, strict) == (False, 1, 10)
    # strict judges the value at the band, non-strict the best so far
    lenient = Hyperband(bands=(1, 2), eta=2.0, strict=False)
    assert should_stop([7, 9.5], histories + [[7, 9.5]], strict) == (True, 2, 9)
    assert should_stop([7, 9.5], histories + [[7, 9.5]], lenient)[0] is False


# --- distributions ------------------------------------------------------------------------------------

DISTRIBUTIONS = {
    "constant": {"value": 3},
    "categorical": {"values": ["a", "b", "c"]},
    "categorical_w_probabilities": {"values": ["x", "y"], "probabilities": [0.8, 0.2]},
    "int_uniform": {"min": 1, "max": 3},
    "uniform": {"min": 2.0, "max": 4.0},
    "q_uniform": {"min": 0.0, "max": 10.0, "q": 2.5},
    "log_uniform": {"min": -3.0, "max": 0.0},
    "log_uniform_values": {"min": 1e-4, "max": 1e-2},
    "q_log_uniform": {"min": 0.0, "max": math.log(1000), "q": 10},
    "q_log_uniform_values": {"min": 1.0, "max": 100.0, "q": 1},
    "inv_log_uniform": {"min": 1.0, "max": 3.0},
    "inv_log_uniform_values": {"min": 0.01, "max": 1.0},
    "normal": {"mu": 5.0, "sigma": 2.0},
    "q_normal": {"mu": 0.0, "sigma": 3.0, "q": 1},
    "log_normal": {"mu": 0.0, "sigma": 0.5},
    "q_log_normal": {"mu": 2.0, "sigma": 0.5, "q": 0.5},
    "beta": {"a": 2.0, "b": 5.0},
    "q_beta": {"a": 2.0, "b": 2.0, "q": 0.1},
}
N_DRAWS = 600


@pytest.fixture(scope="module")
def draws() -> dict[str, np.ndarray]:
    """N_DRAWS runs of a random sweep holding every distribution, sampled through Optuna as an agent does."""
    params = tuple(infer_distribution(d, d, {"distribution": d, **args}, d) for d, args in DISTRIBUTIONS.items())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(N_DRAWS):
        trial = study.ask()
        values = suggest(trial, params)
        trial.set_user_attr("config", values)
        study.tell(trial, 0.0)
    trials = study.get_trials()
    for p in params:  # the stored trial shows the value the run got, beside the uniform it came from
        if p.u_name in trials[0].params:
            assert all(ppf(p, t.params[p.u_name]) == t.user_attrs["config"][p.key] for t in trials)
    return {d: np.array([t.user_attrs["config"][d] for t in trials], dtype=object) for d in DISTRIBUTIONS}


def _ks(sample, cdf) -> float:
    return stats.kstest(np.asarray(sample, dtype=float), cdf).pvalue


def _frequency(sample, value) -> float:
    return float(np.mean([v == value for v in sample]))


def _binomial_ok(sample, value, p) -> bool:
    return abs(_frequency(sample, value) - p) < 4 * math.sqrt(p * (1 - p) / len(sample))


def _multiples(sample, q) -> bool:
    return all(math.isclose(v / q, round(v / q), abs_tol=1e-9) for v in sample)


def test_discrete_distributions(draws):
    assert set(draws["constant"]) == {3}
    assert all(_binomial_ok(draws["categorical"], v, 1 / 3) for v in "abc")
    assert _binomial_ok(draws["categorical_w_probabilities"], "x", 0.8)
    ints = draws["int_uniform"]
    assert set(ints) == {1, 2, 3} and all(isinstance(v, int) for v in ints)  # both ends are reached
    assert all(_binomial_ok(ints, v, 1 / 3) for v in (1, 2, 3))


def test_uniform_family(draws):
    assert _ks(draws["uniform"], stats.uniform(2, 2).cdf) > 1e-3
    q = draws["q_uniform"]  # W&B rounds a uniform draw to a multiple of q: the ends get half weight
    assert _multiples(q, 2.5) and set(q) == {0.0, 2.5, 5.0, 7.5, 10.0}
    assert _binomial_ok(q, 0.0, 0.125) and _binomial_ok(q, 5.0, 0.25)


def test_log_uniform_family(draws):
    exponents = draws["log_uniform"]  # min/max are natural-log exponents
    assert _ks(np.log(exponents.astype(float)), stats.uniform(-3, 3).cdf) > 1e-3
    assert math.isclose(np.median(exponents), math.exp(-1.5), rel_tol=0.15)
    values = draws["log_uniform_values"].astype(float)  # median near the geometric mean of the bounds
    assert values.min() >= 1e-4 and values.max() <= 1e-2 and math.isclose(np.median(values), 1e-3, rel_tol=0.2)
    assert _ks(np.log(values), stats.uniform(math.log(1e-4), math.log(100)).cdf) > 1e-3
    q10 = draws["q_log_uniform"]
    assert _multiples(q10, 10) and all(isinstance(v, int) for v in q10) and 0 <= min(q10) and max(q10) <= 1000
    q1 = draws["q_log_uniform_values"]
    assert all(isinstance(v, int) for v in q1) and 1 <= min(q1) and max(q1) <= 100
    assert 7 <= np.median(q1.astype(float)) <= 13
    inverse = draws["inv_log_uniform"].astype(float)  # log(1/x) is uniform on [min, max]
    assert _ks(np.log(1 / inverse), stats.uniform(1, 2).cdf) > 1e-3
    inverse_values = draws["inv_log_uniform_values"].astype(float)
    assert inverse_values.min() >= 0.01 and inverse_values.max() <= 1.0
    assert _ks(np.log(1 / inverse_values), stats.uniform(0, math.log(100)).cdf) > 1e-3


def test_normal_family(draws):
    assert _ks(draws["normal"], stats.norm(5, 2).cdf) > 1e-3
    qn = draws["q_normal"]
    assert all(isinstance(v, int) for v in qn) and abs(np.mean(qn.astype(float))) < 4 * 3 / math.sqrt(N_DRAWS)
    assert _ks(np.log(draws["log_normal"].astype(float)), stats.norm(0, 0.5).cdf) > 1e-3
    qln = draws["q_log_normal"]
    assert _multiples(qln, 0.5) and min(qln) >= 0
    assert math.isclose(np.median(qln.astype(float)), math.exp(2), rel_tol=0.1)


def test_beta_family(draws):
    assert _ks(draws["beta"], stats.beta(2, 5).cdf) > 1e-3
    qb = draws["q_beta"]
    assert _multiples(qb, 0.1) and min(qb) >= 0 and max(qb) <= 1
    assert abs(np.mean(qb.astype(float)) - 0.5) < 0.03


# --- the local backend --------------------------------------------------------------------------------

def test_bad_sweep_file_exits_2_and_creates_nothing(tmp_path, data_dir):
    root = make_project(tmp_path, data_dir, sweep="method: grid\nparameters:\n  dropuot: {values: [0.1, 0.2]}\n")
    result = run_main("--mode", "sweep", "--sweep-config", "sweep.yaml", cwd=root)
    assert result.returncode == 2
    (line,) = [ln for ln in result.stderr.splitlines() if "ERROR" in ln]
    assert "sweep.yaml: parameter dropuot: not a config key (did you mean 'dropout'?)" in line
    assert "Traceback" not in result.stderr
    assert not (root / "logs" / "sweeps").exists() and not (root / "models").exists()


def test_grid_with_two_agents_visits_every_point_once(tmp_path, data_dir):
    root = make_project(tmp_path, data_dir)
    created = run_main("--mode", "sweep", "--sweep-config", "sweep.yaml", "--sweep-name", "g", cwd=root)
    assert created.returncode == 0, created.stderr[-3000:]
    assert "Sweep id       g" in created.stdout
    assert "python main.py --mode sweep-agent --sweep-id g --count 10" in created.stdout
    assert "Sweep backend local: no W&B API key is configured" in created.stderr  # auto says what and why
    # Each agent may do 3 runs, so both must take part in the 4-point grid.
    agents = [start_main("--mode", "sweep-agent", "--sweep-id", "g", "--count", "3", cwd=root) for _ in range(2)]
    finish(agents)
    study, spec = stored(root, "g")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    points = sorted(tuple(t.user_attrs["config"].values()) for t in trials)
    assert points == [(0.001, 0.2), (0.001, 0.4), (0.003, 0.2), (0.003, 0.4)]
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    check_runs_got_their_values(study)

    out = root / "models" / "sweeps" / "g"
    rows = (out / "runs.csv").read_text().splitlines()
    assert rows[0].startswith("run,state,Training.learning_rate,Model.dropout,val_loss,epochs,run_dir")
    assert len(rows) == 5 and all(",finished," in row for row in rows[1:])
    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logs = "".join(a.log.read_text() for a in agents)
    assert all(f"run {n} val_loss" in logs for n in range(4)) and "Sweep g: " in logs  # live lines, summary
    kept = [t.number for t in trials if list(Path(t.user_attrs["run_dir"]).glob("*.pth"))]
    assert kept == [study.best_trial.number]  # only the best run keeps its checkpoints

    best = json.loads((out / "best_params.json").read_text())
    assert best["best_trial"] == study.best_trial.number and best["metric"] == "val_loss"
    assert best["best_params"] == {"Training.learning_rate": study.best_trial.user_attrs["config"][
        "Training.learning_rate"], "Model.dropout": study.best_trial.user_attrs["config"]["Model.dropout"]}
    cfg = load_config(root / "config" / "config.ini", ["Training.n_epochs=1", "Training.run_name=winner"], env={})
    winner = load_config(train_best(cfg, out / "best_params.json").run_dir / "config.ini", env={})
    assert all(get_value(winner, k) == v for k, v in best["best_params"].items())  # train-optimized takes it


@pytest.mark.long  # ~15 s of CPU: the journal grid test above makes the same claims through a storage
def test_grid_on_postgresql_visits_every_point_once(tmp_path, data_dir, postgres_url):
    """The server is the session's: the sweep's name is its own (hyperopt's tests have a study 'pg')."""
    root = make_project(tmp_path, data_dir, n_epochs=1)
    cfg = load_config(root / "config" / "config.ini", [f"Hyperopt.storage={postgres_url}"], env={})
    create_sweep(cfg, parse_sweep(GRID, "sweep.yaml", cfg), "sweep-pg")
    finish([start_main("--mode", "sweep-agent", "--sweep-id", "sweep-pg", "--count", "3", "--storage", postgres_url,
                       cwd=root) for _ in range(2)])
    study, _ = stored(root, "sweep-pg", postgres_url)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert len({tuple(t.user_attrs["config"].values()) for t in trials}) == 4
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert not (root / "logs" / "sweeps").exists()  # nothing in a journal


def test_hyperband_run_cap_and_failed_run(tmp_path, data_dir):
    """Grid order is fixed: a diverging run fails and the agent goes on; a run made weak by a huge learning
    rate is stopped by hyperband at band 1; run_cap stops the sweep before the fifth point."""
    sweep = """
method: grid
metric: {name: val_loss, goal: minimize}
parameters:
  learning_rate: {values: [1.0e+30, 0.001, 0.002, 1.0, 0.003]}
early_terminate: {type: hyperband, min_iter: 1, eta: 2}
run_cap: 4
"""
    root = make_project(tmp_path, data_dir, sweep=sweep, max_nonfinite_steps=1)
    cfg = load_config(root / "config" / "config.ini", env={})
    create_sweep(cfg, parse_sweep(sweep, "sweep.yaml", cfg), "hb")
    finish([start_main("--mode", "sweep-agent", "--sweep-id", "hb", cwd=root)])
    study, _ = stored(root, "hb")
    trials = study.get_trials()
    assert len(trials) == 4  # run_cap
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE,
                                         TrialState.PRUNED]
    assert "diverged" in trials[0].user_attrs["fail_reason"]
    assert list(trials[3].intermediate_values) == [1]  # stopped at the first band, before epoch 2
    assert trials[3].intermediate_values[1] > max(t.intermediate_values[1] for t in trials[1:3])
    states = [row.split(",")[1] for row in (root / "models/sweeps/hb/runs.csv").read_text().splitlines()[1:]]
    assert states == ["failed", "finished", "finished", "stopped (hyperband)"]


@pytest.mark.long  # ~17 s of CPU: two agents and three runs
def test_killed_agent_loses_nothing(tmp_path, data_dir):
    """Kill an agent during its second run; the next agent fails that run, runs it again, and the first
    run's result is intact."""
    root = make_project(tmp_path, data_dir, sweep=GRID.replace("[0.2, 0.4]", "[0.2]"), n_epochs=3)
    cfg = load_config(root / "config" / "config.ini", env={})
    create_sweep(cfg, parse_sweep(GRID.replace("[0.2, 0.4]", "[0.2]"), "sweep.yaml", cfg), "k")
    agent = start_main("--mode", "sweep-agent", "--sweep-id", "k", cwd=root)
    while True:  # the second run has made its run directory: it is training
        assert agent.poll() is None, agent.log.read_text()[-3000:]
        trials = stored(root, "k")[0].get_trials()
        if len(trials) > 1 and trials[1].state == TrialState.RUNNING and "run_dir" in trials[1].user_attrs:
            break
        time.sleep(0.2)
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    before = stored(root, "k")[0].get_trials()
    finish([start_main("--mode", "sweep-agent", "--sweep-id", "k", cwd=root)])
    after = stored(root, "k")[0].get_trials()
    assert (after[0].state, after[0].value) == (TrialState.COMPLETE, before[0].value)
    assert after[1].state == TrialState.FAIL  # killed with its agent, never finished by an orphan
    assert len(after) == 3 and after[2].state == TrialState.COMPLETE
    assert after[2].user_attrs["config"] == before[1].user_attrs["config"]  # the same point, run again
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(after[2]) == 1


def test_agent_checks_the_stored_sweep_file_again(tmp_path, data_dir):
    root = make_project(tmp_path, data_dir)
    cfg = load_config(root / "config" / "config.ini", env={})
    study = create_sweep(cfg, parse_sweep(GRID, "sweep.yaml", cfg), "again")
    study.set_user_attr(SPEC_ATTR, GRID.replace("dropout", "drop_out"))  # e.g. a key since removed
    with pytest.raises(ConfigError, match=r"sweep again \(sweep.yaml\): parameter Model.drop_out.*'dropout'"):
        run_agent(cfg, "again")
    assert not (root / "models").exists() and study.get_trials(states=(TrialState.RUNNING,)) == []


def test_metric_target_finishes_the_sweep(tmp_path, data_dir):
    """Once a run reaches metric.target, the agent starts no further run."""
    sweep = GRID.replace("goal: minimize}", "goal: minimize, target: 1.0e+6}")
    root = make_project(tmp_path, data_dir, sweep=sweep, n_epochs=1)
    cfg = load_config(root / "config" / "config.ini", env={})
    create_sweep(cfg, parse_sweep(sweep, "sweep.yaml", cfg), "t")
    study, spec = run_agent(cfg, "t")  # any finite val_loss is below the target
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] + [TrialState.WAITING] * 3
    assert (root / "models" / "sweeps" / "t" / "best_params.json").is_file()


# --- the wandb backend --------------------------------------------------------------------------------

def test_wandb_agent_runs_the_child_command_offline(tmp_path, data_dir, monkeypatch):
    """W&B's own agent code builds and starts the run's command from the sweep's command and the run's
    parameters, as it does for a run the server hands out; the run logs to an offline W&B run."""
    from wandb.wandb_agent import Agent

    root = make_project(tmp_path, data_dir, n_epochs=1)
    monkeypatch.chdir(root)
    cfg = load_config("config/config.ini", env={})
    command = sweep_config(parse_sweep(GRID, "sweep.yaml", cfg), "config/config.ini")
    assert command["command"][:4] == ["${env}", "${interpreter}", "${program}", "--mode"]
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(root), "WANDB_SILENT": "true",
                        "WANDB_SWEEP_ID": "sw42", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                        "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)
    agent = Agent(api=None, queue=None, sweep_id="sw42")
    agent._sweep_command = command["command"]  # what the server sends with each run
    agent._command_run({"run_id": "r1", "program": command["program"],
                        "args": {"learning_rate": {"value": 0.003}, "Model": {"value": {"dropout": 0.4}}}})
    assert agent._run_processes["r1"].wait(timeout=300) == 0
    (run,) = (root / "models" / "sweeps" / "sw42" / "runs").glob("*_run-r1")
    run_cfg = load_config(run / "config.ini", env={})
    assert (run_cfg.training.learning_rate, run_cfg.model.dropout) == (0.003, 0.4)
    assert (run_cfg.callbacks.monitor, run_cfg.callbacks.mode) == ("val_loss", "min")
    (offline,) = (root / "wandb").glob("offline-run-*-r1")
    logged = (offline / "run-r1.wandb").read_bytes()
    assert b"val_loss" in logged and b"val/f1_macro" in logged and b"resolved" in logged
    assert yaml.safe_load((root / "wandb" / "sweep-sw42" / "config-r1.yaml").read_text())["learning_rate"] == {
        "value": 0.003}
    out = collect_wandb_runs(cfg, "sw42")  # what the agent writes when W&B's agent returns
    (row,) = [r.split(",") for r in (out / "runs.csv").read_text().splitlines()[1:]]
    assert row[1:4] == ["finished", "0.003", "0.4"]
    best = json.loads((out / "best_params.json").read_text())
    assert best["best_params"] == {"Training.learning_rate": 0.003, "Model.dropout": 0.4}


def test_wandb_run_refuses_a_parameter_the_sweep_does_not_have(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(make_project(tmp_path, data_dir))
    cfg = load_config("config/config.ini", env={})
    with pytest.raises(ConfigError, match="run parameter momentum is not a parameter of this sweep"):
        train_wandb_run(cfg, "sweep.yaml", ["--learning_rate=0.01", "--Model={'dropout': 0.2}", "--momentum=0.5"])
    assert not (tmp_path / "models").exists() and not (tmp_path / "wandb").exists()  # before any W&B run


def test_default_sweep_file_is_valid():
    spec = parse_sweep((REPO / "config" / "sweep.yaml").read_text(), "config/sweep.yaml", Config())
    assert spec.method == "bayes" and spec.hyperband is not None
    assert {p.key for p in spec.params} >= {"Training.learning_rate", "Training.batch_size",
                                            "Optimization.optimizer", "Optimization.weight_decay", "Model.dropout",
                                            "Loss.unknown_weight"}
