"""The search space: `[Hyperopt]` lines like `Training.learning_rate = loguniform(1e-5, 1e-2)`.

Each line becomes an Optuna distribution named after its key. Every bound and choice is checked
against the schema before the first trial, so a bad line never surfaces halfway through a study.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from src.config.loader import apply_overrides, describe_allowed, parse_assignment, parse_value
from src.config.schema import Config, section_fields
from src.utils.errors import ConfigError

SYNTAX = "loguniform(a, b), uniform(a, b[, step]), int(a, b[, step]) or choice(v1, v2, ...)"
_CALL = re.compile(r"\s*(\w+)\s*\((.*)\)\s*", re.DOTALL)
_NOT_SEARCHABLE = {"Training.n_epochs": "each trial trains [Hyperopt] max_epochs epochs"}


def parse_space(cfg: Config) -> dict[str, BaseDistribution]:
    """'Section.key' -> distribution for every line of cfg.hyperopt.search_space, or ConfigError."""
    if not cfg.hyperopt.search_space:
        raise ConfigError("[Hyperopt]: the search space is empty; add lines like "
                          "Model.dropout = uniform(0.1, 0.7)")
    return {key: parse_spec(cfg, key, spec) for key, spec in cfg.hyperopt.search_space}


def _numbers(args: list[str], kind: type, where: str) -> list:
    try:
        return [kind(a) for a in args]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise ConfigError(f"{where}: bounds and step must be {noun}") from None


def parse_spec(cfg: Config, key: str, spec: str) -> BaseDistribution:
    """One search-space line -> distribution; every value it can yield is valid for `key`."""
    where = f"[Hyperopt] search-space line '{key} = {spec}'"
    if key in _NOT_SEARCHABLE:
        raise ConfigError(f"{where}: {key} cannot be searched: {_NOT_SEARCHABLE[key]}")
    section, name, _ = parse_assignment(f"{key}=", where)
    fld = section_fields(section)[name]
    call = _CALL.fullmatch(spec)
    if not call:
        raise ConfigError(f"{where}: expected {SYNTAX}")
    function, args = call.group(1).lower(), [a.strip() for a in call.group(2).split(",")]
    if "" in args:
        raise ConfigError(f"{where}: empty value in the list")

    if function == "choice":
        choices = [parse_value(fld, a, where) for a in args]
        if len(set(choices)) < len(choices):
            raise ConfigError(f"{where}: a value appears twice")
        dist, values = CategoricalDistribution(choices), choices
    elif function in ("uniform", "loguniform", "int"):
        expected = {"uniform": (2, 3), "loguniform": (2,), "int": (2, 3)}[function]
        if len(args) not in expected:
            raise ConfigError(f"{where}: {function} takes {' or '.join(map(str, expected))} numbers")
        allowed = ("int", "float") if function == "int" else ("float",)
        if fld.type not in allowed:
            instead = "int(a, b) or choice(...)" if fld.type == "int" else "choice(...)"
            raise ConfigError(f"{where}: {function}(...) does not fit {key}, which takes "
                              f"{describe_allowed(fld)}; use {instead}")
        low, high, *step = _numbers(args, int if function == "int" else float, where)
        if not low < high:
            raise ConfigError(f"{where}: the lower bound must be below the upper bound")
        if function == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs a lower bound above 0")
        if step and (step[0] <= 0 or not np.isclose((high - low) / step[0], round((high - low) / step[0]))):
            raise ConfigError(f"{where}: the step must be above 0 and divide high - low")
        if function == "int":
            dist = IntDistribution(low, high, step=step[0] if step else 1)
        else:
            dist = FloatDistribution(low, high, log=function == "loguniform", step=step[0] if step else None)
        values = [low, high]
    else:
        raise ConfigError(f"{where}: unknown function '{function}'; expected {SYNTAX}")

    for value in values:
        apply_overrides(cfg, {key: value}, origin=f"{where}:")
    return dist


def suggest(trial: optuna.Trial, space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Ask the trial for a value of every searched key."""
    values = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            values[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            values[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return values


def grid(space: dict[str, BaseDistribution]) -> dict[str, list]:
    """Every value of every key, for the grid sampler: only choices and stepped ranges are finite."""
    values = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution):
            values[key] = list(range(dist.low, dist.high + 1, dist.step))
        elif dist.step is not None:
            count = round((dist.high - dist.low) / dist.step) + 1
            values[key] = [float(v) for v in np.linspace(dist.low, dist.high, count)]
        else:
            raise ConfigError(f"[Hyperopt] sampler = grid: {key} needs choice(...) or a range with a step")
    return values
