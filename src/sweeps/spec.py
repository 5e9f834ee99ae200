"""Read and check a W&B sweep file (W&B's own YAML format) against the config schema.

Written from W&B's sweep configuration spec (docs and the `wandb/sweeps` JSON schema). Every key
of the file is checked and every parameter is mapped onto one config key before anything is
created or trained; an error is one line naming the file and the culprit. Nothing is ignored:
a key this tool cannot honour is refused, not dropped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from src.config.loader import _did_you_mean as did_you_mean
from src.config.loader import apply_overrides, describe_allowed, parse_assignment
from src.config.names import VALIDATION_METRICS
from src.config.schema import SEARCH_SPACE_SECTION, Config, section_fields, section_names
from src.sweeps.distributions import GRID_DISTRIBUTIONS, Param, infer_distribution, support
from src.utils.errors import ConfigError

METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")
TOP_LEVEL = ("method", "metric", "parameters", "early_terminate", "run_cap", "name", "description", "program",
             "command", "project", "entity")
_METRIC_KEYS = ("name", "goal", "target")
_HYPERBAND_KEYS = ("type", "min_iter", "max_iter", "s", "eta", "strict")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Hyperband:
    """W&B's hyperband early termination: the epochs ("bands") at which runs are judged."""

    bands: tuple[int, ...]
    eta: float
    strict: bool


@dataclass(frozen=True)
class SweepSpec:
    path: str
    text: str  # the file as written; stored with the sweep
    method: str
    metric: str
    goal: str
    target: float | None
    params: tuple[Param, ...]
    hyperband: Hyperband | None = None
    run_cap: int | None = None
    name: str = ""
    description: str = ""
    program: str = ""
    command: tuple[str, ...] = ()
    project: str = ""
    entity: str = ""

    @property
    def direction(self) -> str:
        return "maximize" if self.goal == "maximize" else "minimize"


def hyperband_bands(et: dict[str, Any], where: str) -> tuple[int, ...]:
    """W&B's bands: max_iter divided by eta s times (the whole ones, ascending), or min_iter times eta^i."""
    eta = et.get("eta", 3)
    if "max_iter" in et:
        bands, band = [], float(et["max_iter"])
        for _ in range(int(et["s"])):
            band /= eta
            if band < 1:
                break
            bands.append(int(band))
        bands.sort()
    else:
        bands = [int(et["min_iter"] * eta**i) for i in range(100) if et["min_iter"] * eta**i < 1e9]
    if not bands:
        raise ConfigError(f"{where}: no band at or after epoch 1; raise max_iter or s, or lower eta")
    return tuple(dict.fromkeys(bands))


def _number(value: Any, where: str, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{where} = {value!r}: expected {'an integer' if integer else 'a number'}")
    return value


def _check_keys(mapping: Any, allowed: tuple[str, ...], where: str) -> dict:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping of {', '.join(allowed)}")
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(str(key), list(allowed))}; "
                              f"allowed: {', '.join(allowed)}")
    return mapping


def _hyperband(et: Any, origin: str, metric_given: bool) -> Hyperband:
    where = f"{origin}: early_terminate"
    et = _check_keys(et, _HYPERBAND_KEYS, where)
    if et.get("type") != "hyperband":
        raise ConfigError(f"{where}.type = {et.get('type')!r}: expected hyperband")
    if not metric_given:
        raise ConfigError(f"{where}: hyperband needs a metric to judge runs by; add metric.name")
    if "max_iter" in et:
        if "s" not in et:
            raise ConfigError(f"{where}: max_iter needs s (how many bands below max_iter)")
        _number(et["max_iter"], f"{where}.max_iter", integer=True)
        if _number(et["s"], f"{where}.s") < 1:
            raise ConfigError(f"{where}.s = {et['s']}: expected at least 1")
    elif "min_iter" in et:
        if _number(et["min_iter"], f"{where}.min_iter", integer=True) < 1:
            raise ConfigError(f"{where}.min_iter = {et['min_iter']}: expected an integer >= 1")
    else:
        raise ConfigError(f"{where}: give min_iter, or max_iter and s")
    if "eta" in et and _number(et["eta"], f"{where}.eta") <= 1:
        raise ConfigError(f"{where}.eta = {et['eta']}: expected a number above 1")
    strict = et.get("strict", True)
    if not isinstance(strict, bool):
        raise ConfigError(f"{where}.strict = {strict!r}: expected true or false")
    return Hyperband(hyperband_bands(et, where), float(et.get("eta", 3)), strict)


def resolve_key(name: str, where: str) -> str:
    """'Section.key' for a parameter name: Section.key itself, or a bare key of exactly one section."""
    sections = [s for s in section_names() if s != SEARCH_SPACE_SECTION]
    if "." in name:
        section, _, key = name.partition(".")
        if section.lower() == SEARCH_SPACE_SECTION.lower():
            raise ConfigError(f"{where}: [Hyperopt] keys cannot be swept")
        section, key, _ = parse_assignment(f"{name}=", where)
        return f"{section}.{key}"
    owners = [s for s in sections if name.lower() in section_fields(s)]
    if len(owners) == 1:
        return f"{owners[0]}.{name.lower()}"
    if owners:
        raise ConfigError(f"{where}: ambiguous, it names {' and '.join(f'{s}.{name}' for s in owners)}; "
                          "write Section.key")
    bare = sorted({k for s in sections for k in section_fields(s)})
    raise ConfigError(f"{where}: not a config key{did_you_mean(name, bare)}; use Section.key or a key "
                      "of config.ini")


def _check_values(cfg: Config, param: Param, where: str) -> None:
    """Each value the distribution can yield must be one the key accepts (ends of ranges, every choice)."""
    section, name = param.key.split(".")
    fld = section_fields(section)[name]
    low, high, integral = support(param)
    if fld.type in ("str", "bool") and param.distribution not in ("constant", "categorical",
                                                                  "categorical_w_probabilities"):
        raise ConfigError(f"{where}: {param.distribution} yields numbers, but {param.key} takes "
                          f"{describe_allowed(fld)}; use values: [...]")
    if fld.type == "int" and not integral:
        raise ConfigError(f"{where}: {param.distribution} yields non-integers, but {param.key} takes "
                          f"{describe_allowed(fld)}; use int_uniform, values, or a q_ distribution with an "
                          "integer q")
    if param.distribution in ("constant", "categorical", "categorical_w_probabilities"):
        values = param.args["values"] if "values" in param.args else [param.args["value"]]
    else:
        values = [v for v in (low, high) if math.isfinite(v)]
    for value in values:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: value {value!r} is not a single value for {param.key}")
        try:
            apply_overrides(cfg, {param.key: value}, origin=where)
        except ConfigError as exc:
            reason = str(exc).removeprefix(where).strip()
            raise ConfigError(f"{where}: can yield {value!r}, refused: {reason}") from None


def _parameters(tree: Any, prefix: str, origin: str, cfg: Config) -> list[Param]:
    where = f"{origin}: parameters{'.' + prefix if prefix else ''}"
    if not isinstance(tree, dict) or not tree:
        raise ConfigError(f"{where}: expected a mapping of parameter names to their values or distributions")
    params = []
    for name, body in tree.items():
        name = str(name)
        pwhere = f"{origin}: parameter {prefix + name}"
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{pwhere}: names are letters, digits, '_', '.' and '-', starting with a letter")
        if isinstance(body, dict) and "parameters" in body:
            _check_keys(body, ("parameters",), pwhere)
            if prefix:
                raise ConfigError(f"{pwhere}: nesting goes one level deep, a section holding its keys")
            if name.capitalize() not in section_names() or name.capitalize() == SEARCH_SPACE_SECTION:
                raise ConfigError(f"{pwhere}: nested parameters sit under a config section"
                                  f"{did_you_mean(name, section_names())}")
            params += _parameters(body["parameters"], f"{name}.", origin, cfg)
            continue
        key = resolve_key(prefix + name, pwhere)
        param = infer_distribution(prefix + name, key, body, pwhere)
        _check_values(cfg, param, pwhere)
        params.append(param)
    return params


def parse_sweep(text: str, origin: str, cfg: Config) -> SweepSpec:
    """A checked SweepSpec from sweep-file text, or one ConfigError naming `origin` and the culprit."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{origin}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{origin}: expected a mapping of sweep keys ({', '.join(TOP_LEVEL)})")
    _check_keys(doc, TOP_LEVEL, origin)
    if "method" not in doc:
        raise ConfigError(f"{origin}: method is missing; expected one of {', '.join(METHODS)}")
    method = doc["method"]
    if method not in METHODS:
        raise ConfigError(f"{origin}: method = {method!r}: expected one of {', '.join(METHODS)}"
                          f"{did_you_mean(str(method), METHODS)}")
    if "parameters" not in doc:
        raise ConfigError(f"{origin}: parameters is missing")

    metric = _check_keys(doc.get("metric", {}), _METRIC_KEYS, f"{origin}: metric")
    if "metric" in doc and "name" not in metric:
        raise ConfigError(f"{origin}: metric.name is missing")
    if method == "bayes" and "metric" not in doc:
        raise ConfigError(f"{origin}: method bayes learns from a metric; add metric.name and metric.goal")
    metric_name = metric.get("name", cfg.hyperopt.metric)
    if metric_name not in VALIDATION_METRICS:
        raise ConfigError(f"{origin}: metric.name = {metric_name!r} is not a validation metric"
                          f"{did_you_mean(str(metric_name), VALIDATION_METRICS)}")
    goal = metric.get("goal", "minimize")
    if goal not in GOALS:
        raise ConfigError(f"{origin}: metric.goal = {goal!r}: expected minimize or maximize")
    target = metric.get("target")
    if target is not None:
        _number(target, f"{origin}: metric.target")

    params = _parameters(doc["parameters"], "", origin, cfg)
    keys = [p.key for p in params]
    for key in keys:
        if keys.count(key) > 1:
            names = [p.name for p in params if p.key == key]
            raise ConfigError(f"{origin}: parameters {' and '.join(names)} both set {key}")
    if method == "grid":
        for p in params:
            if p.distribution not in GRID_DISTRIBUTIONS:
                raise ConfigError(f"{origin}: parameter {p.name}: {p.distribution} is not discrete; grid takes "
                                  f"{', '.join(GRID_DISTRIBUTIONS)}")

    run_cap = doc.get("run_cap")
    if run_cap is not None and _number(run_cap, f"{origin}: run_cap", integer=True) < 1:
        raise ConfigError(f"{origin}: run_cap = {run_cap}: expected an integer >= 1")
    command = doc.get("command", [])
    if not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        raise ConfigError(f"{origin}: command: expected a list of strings, e.g. [${{env}}, ${{interpreter}}, "
                          "${program}, ${args}]")
    texts = {}
    for key in ("name", "description", "program", "project", "entity"):
        if not isinstance(doc.get(key, ""), str):
            raise ConfigError(f"{origin}: {key} = {doc[key]!r}: expected text")
        texts[key] = doc.get(key, "")
    hyperband = _hyperband(doc["early_terminate"], origin, "metric" in doc) if "early_terminate" in doc else None
    return SweepSpec(path=origin, text=text, method=method, metric=metric_name, goal=goal,
                     target=None if target is None else float(target), params=tuple(params), hyperband=hyperband,
                     run_cap=run_cap, command=tuple(str(c) for c in command), **texts)


def load_sweep(path: str | Path, cfg: Config) -> SweepSpec:
    """parse_sweep of a file; a missing or unreadable file is one ConfigError too."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: sweep file not found; pass --sweep-config FILE") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_sweep(text, str(path), cfg)


def values_by_key(spec: SweepSpec, values: dict[str, Any]) -> dict[str, Any]:
    """{Section.key: value} from {parameter name: value} (names as in the file, nested ones as dicts)."""
    flat: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            flat[name] = value
    by_name = {p.name: p.key for p in spec.params}
    unknown = [n for n in flat if n not in by_name]
    if unknown:
        raise ConfigError(f"{spec.path}: run parameter {unknown[0]} is not a parameter of this sweep"
                          f"{did_you_mean(unknown[0], list(by_name))}")
    return {by_name[n]: v for n, v in flat.items()}
