"""Every distribution of W&B's sweep spec, and how each is drawn on Optuna.

Optuna draws the uniform, integer, log-uniform and categorical ones itself. The others (normal,
beta, weighted categorical, the q_ variants) are drawn through their inverse CDF from a uniform
variable `<key>~u` that Optuna samples (so TPE still learns, on the uniform scale); the value the
run receives is stored on the trial beside it. Conventions follow W&B: `log_uniform` and
`inv_log_uniform` bounds are natural-log exponents, a q_ value is round(x / q) * q (an integer
when q is one), and grid takes int_uniform as range(min, max + 1) and q_uniform as
arange(min, max, q).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from src.config.loader import _did_you_mean as did_you_mean
from src.utils.errors import ConfigError

REQUIRED = object()
# distribution -> {argument: default}; the arguments each one takes, and only those.
DISTRIBUTIONS: dict[str, dict[str, Any]] = {
    "constant": {"value": REQUIRED},
    "categorical": {"values": REQUIRED},
    "categorical_w_probabilities": {"values": REQUIRED, "probabilities": REQUIRED},
    "int_uniform": {"min": REQUIRED, "max": REQUIRED},
    "uniform": {"min": REQUIRED, "max": REQUIRED},
    "q_uniform": {"min": REQUIRED, "max": REQUIRED, "q": 1.0},
    "log_uniform": {"min": REQUIRED, "max": REQUIRED},
    "log_uniform_values": {"min": REQUIRED, "max": REQUIRED},
    "q_log_uniform": {"min": REQUIRED, "max": REQUIRED, "q": 1.0},
    "q_log_uniform_values": {"min": REQUIRED, "max": REQUIRED, "q": 1.0},
    "inv_log_uniform": {"min": REQUIRED, "max": REQUIRED},
    "inv_log_uniform_values": {"min": REQUIRED, "max": REQUIRED},
    "normal": {"mu": 0.0, "sigma": 1.0},
    "q_normal": {"mu": 0.0, "sigma": 1.0, "q": 1.0},
    "log_normal": {"mu": 0.0, "sigma": 1.0},
    "q_log_normal": {"mu": 0.0, "sigma": 1.0, "q": 1.0},
    "beta": {"a": 1.0, "b": 1.0},
    "q_beta": {"a": 1.0, "b": 1.0, "q": 1.0},
}
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")
_VALUE_BOUNDS = ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values")  # min > 0
_U_EPS = 1e-12  # keeps the inverse CDF of unbounded distributions finite


@dataclass(frozen=True)
class Param:
    """One swept parameter: its name in the file, the config key it sets, its distribution."""

    name: str
    key: str
    distribution: str
    args: dict[str, Any]

    @property
    def u_name(self) -> str:
        """The Optuna parameter holding the uniform draw of an inverse-CDF distribution."""
        return f"{self.key}~u"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def infer_distribution(name: str, key: str, body: Any, where: str) -> Param:
    """A Param from a parameter's mapping; `distribution` inferred as W&B does when it is omitted."""
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{values: [...]}}, {{value: x}} or "
                          f"{{min: a, max: b}}, got {body!r}")
    body = dict(body)
    dist = body.pop("distribution", None)
    if dist is None:
        if "value" in body:
            dist = "constant"
        elif "values" in body:
            dist = "categorical_w_probabilities" if "probabilities" in body else "categorical"
        elif "min" in body and "max" in body:
            ints = all(isinstance(body[k], int) and not isinstance(body[k], bool) for k in ("min", "max"))
            dist = "int_uniform" if ints else "uniform"
        else:
            raise ConfigError(f"{where}: give value, values, min and max, or a distribution")
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {dist!r}{did_you_mean(str(dist), list(DISTRIBUTIONS))}; "
                          f"W&B's are {', '.join(DISTRIBUTIONS)}")
    spec = DISTRIBUTIONS[dist]
    for arg in body:
        if arg not in spec:
            raise ConfigError(f"{where}: {dist} takes {', '.join(spec)}, not {arg!r}")
    args = {}
    for arg, default in spec.items():
        if arg not in body and default is REQUIRED:
            raise ConfigError(f"{where}: {dist} needs {arg}")
        args[arg] = body.get(arg, default)
    _check_args(dist, args, f"{where} ({dist})")
    return Param(name, key, dist, args)


def _check_args(dist: str, args: dict, where: str) -> None:
    if "values" in args:
        if not isinstance(args["values"], list) or not args["values"]:
            raise ConfigError(f"{where}: values must be a non-empty list")
        if any(args["values"].count(v) > 1 for v in args["values"]):
            raise ConfigError(f"{where}: a value appears twice in values")
    if "probabilities" in args:
        probs = args["probabilities"]
        if (not isinstance(probs, list) or len(probs) != len(args["values"])
                or not all(_is_number(p) and p >= 0 for p in probs)):
            raise ConfigError(f"{where}: probabilities must be one number >= 0 per value")
        if not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise ConfigError(f"{where}: probabilities sum to {sum(probs):g}, not 1")
    for arg in ("min", "max", "q", "mu", "sigma", "a", "b"):
        if arg in args and not _is_number(args[arg]):
            raise ConfigError(f"{where}: {arg} = {args[arg]!r} is not a number")
    if dist == "int_uniform" and not all(isinstance(args[k], int) for k in ("min", "max")):
        raise ConfigError(f"{where}: min and max must be integers")
    if "min" in args and not args["min"] < args["max"]:
        raise ConfigError(f"{where}: min {args['min']} is not below max {args['max']}")
    if dist in _VALUE_BOUNDS and args["min"] <= 0:
        raise ConfigError(f"{where}: min must be above 0 (the bounds are values, not exponents)")
    for arg in ("q", "sigma", "a", "b"):
        if arg in args and args[arg] <= 0:
            raise ConfigError(f"{where}: {arg} must be above 0")


def _quantise(x: float, q: float) -> float | int:
    value = round(x / q) * q
    return int(value) if isinstance(q, int) else float(round(value, 12))


def support(param: Param) -> tuple[float, float, bool]:
    """(lowest, highest, integers only) of the values a parameter can yield."""
    d, a = param.distribution, param.args
    if d in ("constant", "categorical", "categorical_w_probabilities"):
        values = a["values"] if "values" in a else [a["value"]]
        numbers = [v for v in values if _is_number(v)]
        integral = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        return (min(numbers), max(numbers), integral) if numbers else (math.nan, math.nan, False)
    low, high = {
        "int_uniform": (a.get("min"), a.get("max")), "uniform": (a.get("min"), a.get("max")),
        "q_uniform": (a.get("min"), a.get("max")),
        "log_uniform": (math.exp(a.get("min", 0)), math.exp(a.get("max", 0))),
        "q_log_uniform": (math.exp(a.get("min", 0)), math.exp(a.get("max", 0))),
        "log_uniform_values": (a.get("min"), a.get("max")), "q_log_uniform_values": (a.get("min"), a.get("max")),
        "inv_log_uniform": (math.exp(-a.get("max", 0)), math.exp(-a.get("min", 0))),
        "inv_log_uniform_values": (a.get("min"), a.get("max")),
        "normal": (-math.inf, math.inf), "q_normal": (-math.inf, math.inf),
        "log_normal": (0.0, math.inf), "q_log_normal": (0.0, math.inf),
        "beta": (0.0, 1.0), "q_beta": (0.0, 1.0),
    }[d]
    if "q" in a:
        low = _quantise(low, a["q"]) if math.isfinite(low) else low
        high = _quantise(high, a["q"]) if math.isfinite(high) else high
    integral = d == "int_uniform" or ("q" in a and isinstance(a["q"], int))
    return low, high, integral


def ppf(param: Param, u: float) -> Any:
    """The value at quantile u (0..1) of the parameter's distribution: its inverse CDF."""
    d, a = param.distribution, param.args
    if d == "constant":
        return a["value"]
    if d == "categorical":
        return a["values"][min(int(u * len(a["values"])), len(a["values"]) - 1)]
    if d == "categorical_w_probabilities":
        edges = np.cumsum(a["probabilities"])
        return a["values"][min(int(np.searchsorted(edges, u, side="right")), len(a["values"]) - 1)]
    if d == "int_uniform":
        return min(a["min"] + int(u * (a["max"] - a["min"] + 1)), a["max"])
    u = min(max(u, _U_EPS), 1 - _U_EPS)
    base = d.removeprefix("q_")
    if base in ("uniform", "log_uniform", "log_uniform_values", "inv_log_uniform", "inv_log_uniform_values"):
        # On the scale where the draw is uniform: the value, its log, or the log of its inverse.
        if base in ("uniform", "log_uniform"):
            low, high = a["min"], a["max"]
        elif base == "inv_log_uniform":
            low, high = -a["max"], -a["min"]
        else:
            low, high = math.log(a["min"]), math.log(a["max"])
        x = low + u * (high - low)
        x = x if base == "uniform" else math.exp(x)
    else:
        from scipy import stats  # seconds to import: every sweep run would pay it at start-up

        if base == "normal":
            x = float(stats.norm.ppf(u, loc=a["mu"], scale=a["sigma"]))
        elif base == "log_normal":
            x = float(stats.lognorm.ppf(u, s=a["sigma"], scale=math.exp(a["mu"])))
        else:  # beta
            x = float(stats.beta.ppf(u, a["a"], a["b"]))
    return _quantise(x, a["q"]) if d.startswith("q_") else x


def native(param: Param) -> tuple[str, tuple, dict] | None:
    """(Optuna suggest method, args, kwargs) when Optuna draws the distribution itself, else None.

    log_uniform, inv_log_uniform and their _values forms are all log-uniform between their value
    bounds, which is what Optuna's log=True draws."""
    d, a = param.distribution, param.args
    if d == "categorical":
        return "suggest_categorical", (a["values"],), {}
    if d == "int_uniform":
        return "suggest_int", (a["min"], a["max"]), {}
    if d == "uniform":
        return "suggest_float", (a["min"], a["max"]), {}
    if d in ("log_uniform", "log_uniform_values", "inv_log_uniform", "inv_log_uniform_values"):
        low, high, _ = support(param)
        return "suggest_float", (low, high), {"log": True}
    return None


def grid_values(param: Param) -> list:
    """The values a grid visits for a discrete parameter (W&B's rules)."""
    d, a = param.distribution, param.args
    if d == "constant":
        return [a["value"]]
    if d == "categorical":
        return list(a["values"])
    if d == "int_uniform":
        return list(range(a["min"], a["max"] + 1))
    if d == "q_uniform":
        count = math.ceil((a["max"] - a["min"]) / a["q"] - 1e-9)
        values = [a["min"] + i * a["q"] for i in range(count)]
        return [v if isinstance(v, int) else float(round(v, 12)) for v in values]
    raise ConfigError(f"parameter {param.name}: {d} is not discrete; grid takes {', '.join(GRID_DISTRIBUTIONS)}")


def grid_points(params: tuple[Param, ...]) -> list[dict[str, Any]]:
    """Every combination of the searched (non-constant) parameters' grid values, in file order."""
    searched = [p for p in params if p.distribution != "constant"]
    return [dict(zip((p.key for p in searched), combo))
            for combo in itertools.product(*(grid_values(p) for p in searched))]


def suggest(trial, params: tuple[Param, ...], grid: bool = False) -> dict[str, Any]:
    """{Section.key: value} for one Optuna trial; on a grid, the point the trial was enqueued with."""
    values = {}
    for p in params:
        if p.distribution == "constant":
            values[p.key] = p.args["value"]
        elif grid:
            values[p.key] = trial.suggest_categorical(p.key, grid_values(p))
        elif (how := native(p)) is not None:
            method, args, kwargs = how
            values[p.key] = getattr(trial, method)(p.key, *args, **kwargs)
        else:
            values[p.key] = ppf(p, trial.suggest_float(p.u_name, 0.0, 1.0))
    return values
