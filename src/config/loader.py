"""Read, merge and validate configuration from every source.

Precedence, highest first: command-line flags > --set Section.key=value >
environment variables (CSI_<SECTION>_<KEY>) > the INI file > schema defaults.
"""

from __future__ import annotations

import codecs
import configparser
import dataclasses
import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from src.config.names import VALIDATION_METRICS
from src.config.schema import (
    SEARCH_SPACE_FIELD,
    SEARCH_SPACE_SECTION,
    Config,
    is_search_space_entry,
    section_fields,
    section_names,
)
from src.utils.errors import ConfigError, first_line

ENV_PREFIX = "CSI_"
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word.lower(), [c.lower() for c in candidates], n=1)
    if not close:
        return ""
    original = next(c for c in candidates if c.lower() == close[0])
    return f" (did you mean '{original}'?)"


def _canonical_section(name: str, origin: str) -> str:
    for section in section_names():
        if section.lower() == name.strip().lower():
            return section
    raise ConfigError(
        f"{origin}: unknown section [{name}]{_did_you_mean(name, section_names())}; "
        f"sections are {', '.join(section_names())}"
    )


def _canonical_key(section: str, name: str, origin: str) -> str:
    fields = section_fields(section)
    name = name.strip().lower()
    if is_search_space_entry(section, name):
        target_section, _, target_key = name.partition(".")
        target_section = _canonical_section(target_section, f"{origin} search-space line '{name}'")
        if target_section == SEARCH_SPACE_SECTION:
            raise ConfigError(f"{origin}: search-space line '{name}': [Hyperopt] keys cannot be searched")
        return f"{target_section}.{_canonical_key(target_section, target_key, f'{origin} search-space line')}"
    if name not in fields or name == SEARCH_SPACE_FIELD and section == SEARCH_SPACE_SECTION:
        raise ConfigError(
            f"{origin}: unknown key '{name}' in [{section}]{_did_you_mean(name, list(fields))}; "
            f"keys are {', '.join(fields)}"
        )
    return name


def describe_allowed(fld: dataclasses.Field) -> str:
    """Human description of what a key accepts, e.g. 'an integer >= 1'."""
    meta, kind = fld.metadata, fld.type
    if meta["metric"]:
        return ("a metric of validation_history.json, e.g. val_loss, val_f1_macro, val_qwk, val_csi_mae, "
                "val_ahf_accuracy, val_f1_macro_right_sup")
    if meta["choices"]:
        kind = "<name>" if meta["prefix_min"] is None else f"N (a whole number >= {meta['prefix_min']})"
        named = "".join(f", {prefix}{kind}" for prefix in meta["prefixes"])
        return "one of " + ", ".join(meta["choices"] + tuple(meta["aliases"])) + named
    if kind == "bool":
        return "true or false"
    if kind == "str":
        return "text"
    noun = "an integer" if kind == "int" else "a number"
    bounds = []
    if meta["min"] is not None:
        bounds.append(f"{'>' if meta['min_exclusive'] else '>='} {meta['min']:g}")
    if meta["max"] is not None:
        bounds.append(f"<= {meta['max']:g}")
    return noun + (" " + " and ".join(bounds) if bounds else "")


def parse_value(fld: dataclasses.Field, raw: Any, where: str) -> Any:
    """Convert a raw INI/--set/env value (or an already typed value) to the key's type, or raise."""
    meta, kind = fld.metadata, fld.type
    text = raw.strip() if isinstance(raw, str) else raw
    problem = f"{where} = {raw!r} is not allowed: expected {describe_allowed(fld)}"
    try:
        if kind == "bool":
            if isinstance(text, bool):
                return text
            if str(text).lower() not in _TRUE | _FALSE:
                raise ValueError
            return str(text).lower() in _TRUE
        if kind == "int":
            if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
                raise ValueError
            value = int(text) if not isinstance(text, str) else int(text, 10)
        elif kind == "float":
            if isinstance(text, bool):
                raise ValueError
            value = float(text)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
        else:
            value = str(text)
    except (TypeError, ValueError):
        raise ConfigError(problem) from None
    prefix = next((p for p in meta["prefixes"] if value.lower().startswith(p)), None)
    rest = value[len(prefix):].strip() if prefix else ""
    if rest and meta["prefix_min"] is not None:
        if not rest.isdigit() or int(rest) < meta["prefix_min"]:
            raise ConfigError(problem)
        return prefix + str(int(rest))
    if rest:  # the name keeps its case: hub repositories are case-sensitive
        return prefix + rest
    if meta["choices"]:
        lowered = value.lower()
        lowered = meta["aliases"].get(lowered, lowered)
        if lowered not in meta["choices"]:
            raise ConfigError(problem + _did_you_mean(value, list(meta["choices"])))
        return lowered
    if meta["metric"] and value not in VALIDATION_METRICS:
        raise ConfigError(problem + _did_you_mean(value, list(VALIDATION_METRICS)))
    if meta["min"] is not None and (value < meta["min"] or (meta["min_exclusive"] and value == meta["min"])):
        raise ConfigError(problem)
    if meta["max"] is not None and value > meta["max"]:
        raise ConfigError(problem)
    return value


def parse_assignment(text: str, origin: str = "--set") -> tuple[str, str, str]:
    """Split 'Section.key=value' into canonical (section, key, value)."""
    dotted, sep, value = text.partition("=")
    section, dot, name = dotted.strip().partition(".")
    if not sep or not dot:
        raise ConfigError(f"{origin} {text!r}: expected Section.key=value, e.g. Training.batch_size=16")
    section = _canonical_section(section, f"{origin} {text!r}")
    return section, _canonical_key(section, name, f"{origin} {text!r}"), value


def read_ini_text(text: str, origin: str) -> dict[tuple[str, str], tuple[str, str]]:
    """Raw (section, key) -> (value, origin) pairs from INI text; `origin` names it in errors."""
    parser = configparser.ConfigParser(
        interpolation=configparser.ExtendedInterpolation(), inline_comment_prefixes=("#",)
    )
    try:
        parser.read_string(text, source=origin)
    except configparser.Error as exc:
        raise ConfigError(f"{origin}: not a valid INI file: {first_line(exc)}") from None
    values: dict[tuple[str, str], tuple[str, str]] = {}
    seen_sections: dict[str, str] = {}
    for raw_section in parser.sections():
        section = _canonical_section(raw_section, origin)
        if section in seen_sections:
            raise ConfigError(f"{origin}: section [{raw_section}] appears twice (also as [{seen_sections[section]}])")
        seen_sections[section] = raw_section
        for raw_key in parser[raw_section]:
            where = f"{origin}: [{raw_section}] {raw_key}"
            name = _canonical_key(section, raw_key, f"{origin}: [{raw_section}]")
            try:
                values[(section, name)] = (parser[raw_section][raw_key], where)
            except configparser.Error as exc:
                raise ConfigError(f"{where}: {first_line(exc)}") from None
    return values


def read_ini(path: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """Raw (section, key) -> (value, origin) pairs from an INI file."""
    if not path.is_file():
        raise ConfigError(
            f"{path}: config file not found; run from the directory holding config/config.ini "
            "or pass --config PATH"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return read_ini_text(text, str(path))


def read_env(env: Mapping[str, str]) -> dict[tuple[str, str], tuple[str, str]]:
    """Raw values from CSI_<SECTION>_<KEY> environment variables."""
    values = {}
    for var, value in env.items():
        if not var.upper().startswith(ENV_PREFIX):
            continue
        section_part, _, key_part = var[len(ENV_PREFIX):].partition("_")
        if section_part.lower() not in {s.lower() for s in section_names()}:
            continue
        section = _canonical_section(section_part, f"environment variable {var}")
        values[(section, _canonical_key(section, key_part, f"environment variable {var}"))] = (
            value, f"environment variable {var}")
    return values


def validate(cfg: Config, origin: str = "config") -> None:
    """Checks that involve several keys."""
    data = cfg.data
    total = data.train_fraction + data.val_fraction + data.test_fraction
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"{origin}: [Data] train_fraction + val_fraction + test_fraction = {total:g}; they must sum to 1"
        )
    if data.train_fraction == 0 or data.val_fraction == 0:
        raise ConfigError(f"{origin}: [Data] train_fraction and val_fraction must be above 0")
    if len(data.csv_separator) > 1 or data.csv_separator in ('"', "\n", "\r"):
        raise ConfigError(f"{origin}: [Data] csv_separator = {data.csv_separator!r} is not allowed: expected one "
                          "character such as ; , or a tab, or empty to detect it")
    if data.csv_encoding != "auto":
        try:
            codecs.lookup(data.csv_encoding)
        except LookupError:
            raise ConfigError(f"{origin}: [Data] csv_encoding = {data.csv_encoding!r} is not a known text encoding "
                              "(e.g. auto, utf-8, cp1252, latin-1)") from None
    if data.clip_low_percentile >= data.clip_high_percentile:
        raise ConfigError(f"{origin}: [Data] clip_low_percentile must be below clip_high_percentile")
    ev = cfg.evaluation
    if ev.ahf_low_threshold >= ev.ahf_high_threshold:
        raise ConfigError(f"{origin}: [Evaluation] ahf_low_threshold must be below ahf_high_threshold")
    if cfg.hyperopt.cv_folds == 1:
        raise ConfigError(f"{origin}: [Hyperopt] cv_folds = 1 is not allowed: 0 (no cross-validation) or >= 2")
    workers = cfg.training.num_workers
    if workers != "auto" and not (workers.isdigit() and workers.isascii()):
        raise ConfigError(f"{origin}: [Training] num_workers = {workers!r} is not allowed: expected auto or an "
                          "integer >= 0")
    if cfg.training.ema_decay == 1:
        raise ConfigError(f"{origin}: [Training] ema_decay = 1 is not allowed: the average would never move; expected "
                          "0 (off) or a number below 1 such as 0.999")
    device = cfg.training.device
    if device not in ("auto", "cpu", "cuda", "mps") and not (
        device.startswith("cuda:") and device[5:].isdigit()
    ):
        raise ConfigError(
            f"{origin}: [Training] device = {device!r} is not allowed: expected auto, cpu, cuda, cuda:N or mps"
        )


def build_config(raw: Mapping[tuple[str, str], tuple[Any, str]]) -> Config:
    """Typed Config from raw (section, key) -> (value, origin); unspecified keys keep defaults."""
    sections = {}
    for section in section_names():
        fields = section_fields(section)
        kwargs = {
            name: parse_value(fields[name], value, origin)
            for (sec, name), (value, origin) in raw.items()
            if sec == section and not is_search_space_entry(sec, name)
        }
        space = tuple((name, str(value).strip()) for (sec, name), (value, _) in raw.items()
                      if sec == section and is_search_space_entry(sec, name))
        if space:
            kwargs[SEARCH_SPACE_FIELD] = space
        section_type = type(getattr(Config(), section.lower()))
        sections[section.lower()] = section_type(**kwargs)
    return Config(**sections)


def load_config(
    path: str | Path | None = "config/config.ini",
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cli: Mapping[str, Any] | None = None,
) -> Config:
    """Merge every source into one validated Config.

    `cli` maps 'Section.key' to values given by dedicated command-line flags.
    `path=None` starts from the schema defaults alone.
    """
    raw: dict[tuple[str, str], tuple[Any, str]] = {}
    if path is not None:
        raw.update(read_ini(Path(path)))
    raw.update(read_env(os.environ if env is None else env))
    for text in overrides:
        section, name, value = parse_assignment(text)
        raw[(section, name)] = (value, f"--set {section}.{name}")
    for dotted, value in (cli or {}).items():
        section, name, _ = parse_assignment(f"{dotted}=", "flag")
        flag = section_fields(section)[name].metadata["flag"] or dotted
        raw[(section, name)] = (value, f"{flag}")
    cfg = build_config(raw)
    validate(cfg, str(path) if path is not None else "config")
    return cfg


def config_from_text(text: str, origin: str) -> Config:
    """Config from INI text alone (e.g. the copy embedded in a checkpoint); no env, no defaults file."""
    cfg = build_config(read_ini_text(text, origin))
    validate(cfg, origin)
    return cfg


def apply_overrides(cfg: Config, values: Mapping[str, Any], origin: str = "override") -> Config:
    """A copy of `cfg` with 'Section.key' values replaced, parsed and validated like any source."""
    raw = {
        (section, name): (getattr(getattr(cfg, section.lower()), name), f"{origin} {section}.{name}")
        for section in section_names()
        for name in section_fields(section)
        if not (section == SEARCH_SPACE_SECTION and name == SEARCH_SPACE_FIELD)
    }
    raw.update({(SEARCH_SPACE_SECTION, name): (spec, origin) for name, spec in cfg.hyperopt.search_space})
    for dotted, value in values.items():
        section, name, _ = parse_assignment(f"{dotted}=", origin)
        raw[(section, name)] = (value, f"{origin} {section}.{name}")
    new = build_config(raw)
    validate(new, origin)
    return new


def get_value(cfg: Config, dotted: str) -> Any:
    """Value of 'Section.key'."""
    section, name, _ = parse_assignment(f"{dotted}=", "key")
    return getattr(getattr(cfg, section.lower()), name)
