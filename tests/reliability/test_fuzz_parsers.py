"""Any bytes given as config.ini or labels CSV give a valid result or a clean CSIError, never
another exception (hypothesis)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.config.loader import load_config
from src.config.schema import all_keys
from src.data.labels import read_labels
from src.data.zones import ZONES
from src.utils.errors import CSIError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces that steer generated text towards what the parsers see, so mutations reach deep code.
INI_TOKENS = st.sampled_from(
    ["[Data]", "[Training]", "[Hyperopt]", "[DEFAULT]", "\n", " = ", ":", "#", ";", "${", "}", "%", "[", "]",
     "1", "-1", "0.5", "1e999", "nan", "true", "x", "\t", "\r\n", "\ufeff", "\x00"]
    + [key.split(".")[1] for key in all_keys()] + ["Training.learning_rate", "loguniform(1e-5, 1e-2)", "choice(",
                                                   "int(1, 3, 0)"])
CSV_TOKENS = st.sampled_from(["FileID", *ZONES, "PatientID", "split", "path", "csi", ";", ",", "\t", "\n", "\r\n",
                              '"', '""', "0", "3", "4", "5", "1.0", "00042", "12345.0", "nan", "", "train",
                              "holdout", "../x", "\ufeff", "\x00", "é", "\xff"])


def _text(tokens):
    return st.lists(tokens, max_size=40).map("".join)


def _as_bytes(text_or_bytes) -> bytes:
    if isinstance(text_or_bytes, bytes):
        return text_or_bytes
    return text_or_bytes.encode("utf-8", "surrogatepass")


INI_INPUT = st.one_of(st.binary(max_size=300), _text(INI_TOKENS),
                      _text(INI_TOKENS).map(lambda t: t.encode("cp1252", "replace")))
CSV_INPUT = st.one_of(st.binary(max_size=300), _text(CSV_TOKENS),
                      _text(CSV_TOKENS).map(lambda t: t.encode("utf-16")),
                      _text(CSV_TOKENS).map(lambda t: t.encode("cp1252", "replace")))


def _parse(parse, data: bytes, name: str):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            return parse(path)
        except CSIError as err:
            assert "\n" not in str(err) and str(path) in str(err)
            return None


@FUZZ
@given(INI_INPUT)
def test_config_parser_never_crashes(data):
    cfg = _parse(lambda path: load_config(path, env={}), _as_bytes(data), "config.ini")
    assert cfg is None or cfg.data.train_fraction + cfg.data.val_fraction + cfg.data.test_fraction > 0.99


@FUZZ
@given(CSV_INPUT)
def test_labels_parser_never_crashes(data):
    table = _parse(read_labels, _as_bytes(data), "labels.csv")
    if table is not None:
        assert table["FileID"].map(bool).all() and not table["FileID"].duplicated().any()
        assert table[list(ZONES)].isin([0, 1, 2, 3, 4]).all().all()
