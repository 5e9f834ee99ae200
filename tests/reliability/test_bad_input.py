"""Bad input, worked through per input: every config key, labels column, image format, checkpoint,
best_params.json, split.csv and --resume. Each gives one line naming the file and the key, line or
FileID (exit 2 end to end), nothing half-written, earlier runs untouched."""

from __future__ import annotations

import hashlib
import pickle
import re
import shutil
from pathlib import Path

import data_store
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from src.cli.hyperopt import run_train_optimized
from src.config.loader import load_config
from src.config.schema import SEARCH_SPACE_FIELD, section_fields, section_names
from src.data.load import load_data, read_split_csv
from src.data.readers import read_image
from src.models.factory import build_model
from src.utils.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from src.utils.errors import CheckpointError, ConfigError, DataError
from tests.conftest import run_main, write_config, write_png_dataset

MR_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm"
NIFTI_2D = Path(nib.__file__).parent / "tests" / "data" / "standard.nii.gz"


def _fields():
    for section in section_names():
        for name, fld in section_fields(section).items():
            if not (name == SEARCH_SPACE_FIELD and section == "Hyperopt"):
                yield f"{section}.{name}", fld


def _wrong_values(fld) -> list[str]:
    """Values a key must refuse: wrong type, empty, and just outside its range."""
    meta = fld.metadata
    if meta["choices"]:
        return ["", "no_such_choice"]
    if fld.type == "str":
        return []
    values = ["", "abc", "[1, 2]"] + (["1.5"] if fld.type == "int" else []) + (["nan", "inf"] if fld.type == "float"
                                                                             else [])
    if fld.type == "bool":
        return ["", "maybe", "2"]
    if meta["min"] is not None:
        values.append(str(meta["min"] if meta["min_exclusive"] else meta["min"] - 1))
    if meta["max"] is not None:
        values.append(str(meta["max"] + 1))
    return values


CASES = [(dotted, value) for dotted, fld in _fields() for value in _wrong_values(fld)]


def test_every_typed_key_has_cases():
    typed = {dotted for dotted, fld in _fields() if fld.type != "str" or fld.metadata["choices"]}
    assert typed == {dotted for dotted, _ in CASES} and len(CASES) > 200


def test_every_config_key_refuses_bad_values_naming_file_and_key(tmp_path):
    ini = tmp_path / "config.ini"
    accepted = []
    for dotted, value in CASES:  # one test, not one per case: several hundred cases, cheap each
        section, name = dotted.split(".")
        ini.write_text(f"[{section}]\n{name} = {value}\n")
        try:
            load_config(ini, env={})
        except ConfigError as err:
            message = str(err)
            assert f"{ini}: [{section}] {name} = " in message and "expected" in message, message
            assert "\n" not in message
        else:
            accepted.append(f"{dotted} = {value!r}")
    assert not accepted


@pytest.mark.parametrize("text, fragment", [
    ("[Data\nimage_size = 32\n", "not a valid INI file"),
    ("image_size = 32\n", "not a valid INI file"),
    ("[Data]\nimage_size = 32\nimage_size = 64\n", "not a valid INI file"),
    ("[Data]\n[Data]\n", "not a valid INI file"),
    ("[Data]\nlabels_csv = ${Missing:key}\n", "[Data] labels_csv"),
    ("[Dta]\n", "unknown section [Dta] (did you mean 'Data'?)"),
    ("[Data]\nimage_sise = 32\n", "unknown key 'image_sise' in [Data] (did you mean 'image_size'?)"),
    ("[Data]\ntrain_fraction = 0.5\nval_fraction = 0.2\ntest_fraction = 0.2\n", "must sum to 1"),
    ("[Data]\ntrain_fraction = 0.85\nval_fraction = 0\ntest_fraction = 0.15\n", "must be above 0"),
    ("[Data]\nclip_low_percentile = 50\nclip_high_percentile = 50\n", "clip_low_percentile must be below"),
    ("[Data]\ncsv_encoding = klingon\n", "is not a known text encoding"),
    ("[Data]\ncsv_separator = ;;\n", "expected one character"),
    ("[Training]\ndevice = gpu\n", "[Training] device = 'gpu' is not allowed"),
    ("\xff\xfe[Data]", "cannot read"),
])
def test_malformed_or_inconsistent_config(tmp_path, text, fragment):
    ini = tmp_path / "config.ini"
    ini.write_text(text, encoding="latin-1")
    with pytest.raises(ConfigError) as err:
        load_config(ini, env={})
    assert fragment in str(err.value) and str(ini) in str(err.value) and "\n" not in str(err.value)


# Labels that parse but cannot make a run.


def _config(tmp_path: Path, data: Path, **data_keys) -> Path:
    return write_config(tmp_path / "config" / "config.ini", data, Data=data_keys)


@pytest.mark.parametrize("split_column, fragment", [
    (["train"] * 6, "the val split(s) would be empty"),
    (["val"] * 3 + ["test"] * 3, "the train split(s) would be empty"),
    (["test"] * 6, "the train and val split(s) would be empty"),
])
def test_explicit_split_leaving_train_or_val_empty(tmp_path, split_column, fragment):
    data = tmp_path / "data"
    labels = write_png_dataset(data, np.zeros((6, 6), int))
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join([lines[0] + ";split"] + [f"{ln};{s}" for ln, s in zip(lines[1:], split_column)]))
    with pytest.raises(DataError, match=re.escape(fragment)):
        load_data(load_config(_config(tmp_path, data), env={}))


def test_too_few_images_for_a_val_split(tmp_path):
    data = tmp_path / "data"
    write_png_dataset(data, np.zeros((1, 6), int))
    with pytest.raises(DataError, match=r"val split\(s\) would be empty \(1 usable image\(s\): train 1, val 0"):
        load_data(load_config(_config(tmp_path, data), env={}))


@pytest.mark.parametrize("content, fragment", [
    ("", "not a readable split file"),
    ("FileID,fold\n1000,train\n", "expected columns FileID and split"),
    ("FileID,split\n1000,train\n1001,holdout\n", "line 3 (FileID 1001): split 'holdout' is not one of train"),
    ("FileID,split\n1000,train\n1000,val\n", "line 3: FileID 1000 appears twice"),
    ('FileID,split\n"1000,train\n', "not a readable split file"),
    ("FileID,split\nx,train\n", "none of its FileIDs has a usable image"),
])
def test_bad_split_csv(tmp_path, content, fragment):
    data = tmp_path / "data"
    write_png_dataset(data, np.zeros((4, 6), int))
    split = tmp_path / "split.csv"
    split.write_text(content)
    with pytest.raises(DataError) as err:
        read_split_csv(split)
        load_data(load_config(_config(tmp_path, data), env={}), split_csv=split)
    assert fragment in str(err.value) and str(split) in str(err.value)


# Image files, per format: zero bytes, truncated, corrupt, wrong dimensionality.


def _png(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 65535, (32, 32), dtype=np.uint16)).save(path)


def _jpeg(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(path, quality=90)


def _dicom(path: Path) -> None:
    shutil.copy(MR_SMALL, path)


def _nifti(path: Path) -> None:
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((32, 1, 32), dtype=np.float32), np.eye(4)), path)


WRITERS = {".png": _png, ".jpg": _jpeg, ".jpeg": _jpeg, ".dcm": _dicom, ".IMA": _dicom, "": _dicom,
           ".nii": _nifti, ".nii.gz": _nifti}


def _flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:]


@pytest.mark.parametrize("ext", list(WRITERS))
@pytest.mark.parametrize("damage", ["zero bytes", "truncated", "header only", "corrupt"])
def test_damaged_image_is_one_line_naming_the_file(tmp_path, ext, damage):
    path = tmp_path / f"IM0001{ext}"
    WRITERS[ext](path)
    data = path.read_bytes()
    damaged = {"zero bytes": b"", "truncated": data[: len(data) * 2 // 3], "header only": data[:140],
               "corrupt": _flip_middle(data)}[damage]
    path.write_bytes(damaged)
    try:
        image = read_image(path)
    except DataError as err:
        assert str(path) in str(err) and "\n" not in str(err)
        return
    # Flipped bytes inside uncompressed pixels, or inside JPEG entropy-coded data (decoders resync
    # at the next marker), still make an image: no checksum covers them. Everything else is refused.
    assert damage == "corrupt" and ext in (".dcm", ".IMA", "", ".nii", ".jpg", ".jpeg") and image.shape[0] > 1


def _nifti_volume(shape: tuple[int, ...]):
    def write(folder: Path) -> Path:
        nib.save(nib.Nifti1Image(np.random.default_rng(0).random(shape, dtype=np.float32), np.eye(4)),
                 folder / "v.nii.gz")
        return folder / "v.nii.gz"
    return write


def _multiframe_dicom(folder: Path) -> Path:
    return Path(shutil.copy(Path(data_store.__file__).parent / "data" / "emri_small.dcm", folder / "v.dcm"))


@pytest.mark.parametrize("write, message", [
    (_nifti_volume((8, 9, 10)), "a volume of 10 slices"),
    (_nifti_volume((8, 9, 10, 3)), "a volume of 3 volumes"),
    (_multiframe_dicom, "a volume of 10 frames"),
])
def test_volumes_are_refused_or_sliced_as_told(tmp_path, write, message):
    path = write(tmp_path)
    with pytest.raises(DataError, match=message + ", not a 2-D image; set \\[Data\\] volume_slice"):
        read_image(path)
    assert read_image(path, "middle").ndim == 2
    with pytest.raises(DataError, match=r"volume_index = 99 but the volume has"):
        read_image(path, "index", 99)


def test_nifti_with_more_than_4_axes(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 1, 2, 2), np.float32), np.eye(4)), tmp_path / "x.nii")
    with pytest.raises(DataError, match="expected a 2-D image"):
        read_image(tmp_path / "x.nii", "first")


# Checkpoints.


class _Payload:
    """Unpickling this runs code: it would create the file named by `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _trained_state(cfg_text: str = "[Model]\nmodel_arch = custom_cnn\npretrained = false\n") -> dict:
    cfg = load_config(None, ["Model.model_arch=custom_cnn", "Model.pretrained=false"], env={})
    return {"model": build_model(cfg).state_dict(), "arch": "custom_cnn", "config": cfg_text}


def test_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code_ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()  # the payload really runs code when unpickled
    marker.unlink()
    path = tmp_path / "evil.pth"
    torch.save({**_trained_state(), "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="not a readable CSI-Predictor checkpoint") as err:
        read_checkpoint(path)
    assert not marker.exists() and "\n" not in str(err.value)


@pytest.mark.parametrize("damage, fragment", [
    (lambda data: b"", "not a readable"),
    (lambda data: data[: len(data) // 2], "not a readable"),
    (lambda data: _flip_middle(data), "not a readable"),
    (lambda data: b"PK\x03\x04" + bytes(60), "not a readable"),
])
def test_damaged_checkpoint(tmp_path, damage, fragment):
    path = tmp_path / "best_model.pth"
    save_checkpoint(path, _trained_state())
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=fragment) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_of_another_architecture_or_shape(tmp_path):
    cfg = load_config(None, ["Model.model_arch=custom_cnn", "Model.pretrained=false"], env={})
    other = tmp_path / "resnet.pth"
    torch.save({"model": {}, "arch": "resnet50", "config": ""}, other)
    with pytest.raises(CheckpointError, match="checkpoint is a resnet50 model, not custom_cnn"):
        load_checkpoint(build_model(cfg), other)
    state = _trained_state()
    state["model"] = {k: v[..., :1] if v.ndim else v for k, v in state["model"].items()}
    save_checkpoint(tmp_path / "shape.pth", state)
    with pytest.raises(CheckpointError, match="weights do not fit this model"):
        load_checkpoint(build_model(cfg), tmp_path / "shape.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="no model/arch/config entries"):
        read_checkpoint(tmp_path / "list.pth")


# best_params.json


@pytest.mark.parametrize("payload, fragment", [
    ("{", "not valid JSON"),
    ("[]", "no best_params object"),
    ('{"best_params": 3}', "no best_params object"),
    ('{"best_params": {"Training.learnig_rate": 0.1}}', "searched key Training.learnig_rate is not a setting"),
    ('{"best_params": {"Nope.x": 1}}', "searched key Nope.x is not a setting"),
    ('{"best_params": {"Training.batch_size": "many"}}', "Training.batch_size = 'many' is not allowed"),
    ('{"best_params": {"Training.batch_size": 0}}', "Training.batch_size = 0 is not allowed"),
])
def test_bad_best_params(tmp_path, payload, fragment):
    path = tmp_path / "best_params.json"
    path.write_text(payload)
    cfg = load_config(None, ["Model.pretrained=false"], env={})
    with pytest.raises(ConfigError) as err:
        run_train_optimized(cfg, {"hyperparams": str(path)})
    assert fragment in str(err.value) and str(path) in str(err.value)


# End to end: exit 2, one line on stderr, a traceback only with --log-level debug, nothing written,
# an earlier run untouched.


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with a small dataset and an earlier run whose files must survive bad input."""
    write_png_dataset(tmp_path / "data", np.random.default_rng(0).integers(0, 4, (8, 6)))
    write_config(tmp_path / "config" / "config.ini", tmp_path / "data")
    earlier = tmp_path / "models" / "20260101_000000_custom_cnn_run"
    earlier.mkdir(parents=True)
    save_checkpoint(earlier / "last_model.pth", _trained_state())
    (earlier / "split.csv").write_text("FileID,split\n1000,train\n")
    return tmp_path


def _fails_cleanly(project: Path, *args: str, fragment: str, may_write: str = "logs/") -> None:
    """`main.py ARGS` exits 2 with one line holding `fragment`; only files under `may_write` (the
    tool's log; for image problems also the complete image cache) appear, nothing else changes."""
    kept = ("logs/", may_write)
    before = {k: v for k, v in _snapshot(project).items() if not k.startswith(kept)}
    result = run_main(*args, cwd=project)
    # Progress bars (carriage-return redrawn, gone when done) are not messages.
    lines = [line for line in result.stderr.splitlines() if line.strip() and "img/s]" not in line]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert {k: v for k, v in _snapshot(project).items() if not k.startswith(kept)} == before


def test_end_to_end_bad_inputs_exit_2_with_one_line(project):
    ini, labels = project / "config" / "config.ini", project / "data" / "labels.csv"
    good_ini, good_labels = ini.read_text(), labels.read_text()
    _fails_cleanly(project, "--mode", "train", "--resume", "models/absent", fragment="nothing to resume")
    _fails_cleanly(project, "--mode", "train", "--overfit-batches", "0",
                   fragment="Invalid value for '--overfit-batches'")
    ini.write_text(good_ini.replace("[Model]", "[Model"))
    _fails_cleanly(project, "--mode", "train", fragment="not a valid INI file")
    debug = run_main("--mode", "train", "--log-level", "debug", cwd=project)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    ini.write_text(good_ini)

    rows = good_labels.splitlines()
    labels.write_text("\n".join([rows[0] + ";path", *rows[1:], "x;0;0;0;0;0;0;../../secret.png"]) + "\n")
    _fails_cleanly(project, "--mode", "train", fragment="line 10 (FileID x): path '../../secret.png' leads outside")
    labels.write_text(good_labels)
    (project / "data" / "images" / "1003.png").write_bytes(b"")
    _fails_cleanly(project, "--mode", "train", fragment="1 image(s) missing or unreadable: 1003 (",
                   may_write="data/cache/")


def test_labels_readers_outcome_and_brixia_bad_input_exit_2_with_one_line(project):
    """A reader column of a zone that does not exist, an outcome that is not binary, a BrixiaScore digit
    above 3: one line naming the file, the line or column, and what is allowed."""
    labels = project / "data" / "labels.csv"
    rows = labels.read_text().splitlines()
    header, cells = rows[0].split(";"), [row.split(";") for row in rows[1:]]
    readers = ";".join(["FileID", *(f"{z}@r1" for z in header[1:7]), "right_upper@r2",
                        *(f"{z}@r2" for z in header[2:7])])
    labels.write_text("\n".join([readers, *(";".join(c[:7] + c[1:7]) for c in cells)]) + "\n")
    _fails_cleanly(project, "--mode", "check", fragment="column right_upper@r2 is not <zone>@<reader>: zone "
                   "'right_upper' is not one of right_sup, left_sup")
    outcome = [rows[0] + ";AHF", *(f"{row};{v}" for row, v in zip(rows[1:], ["1", "0", "2", "1", "0", "0", "1", "1"]))]
    labels.write_text("\n".join(outcome) + "\n")
    _fails_cleanly(project, "--mode", "check", "--set", "Evaluation.outcome_column=AHF",
                   fragment="line 4 (FileID 1002), column AHF: '2' is not a binary outcome; allowed 0 or 1")
    brixia = project / "data" / "metadata_global_v2.csv"
    brixia.write_text("Filename;BrixiaScore;ConsensusTestset;Subject\n1000.png;012300;0;S1\n1001.png;000400;0;S2\n")
    _fails_cleanly(project, "--mode", "check", "--set", "Data.label_format=brixia", "--set",
                   f"Data.labels_csv={brixia}", fragment="line 3 (Filename 1001.png): BrixiaScore '000400' gives zone "
                   "D (left_sup) the score 4; each of the six digits must be 0-3")


def test_degenerate_inputs_are_refused_before_training(project):
    """Labels whose every zone is Unknown (train), and an image of 1x1 pixels (check, the same load_data):
    refused before any epoch, one line naming the file (and the FileID, its size and the smallest size
    that holds six zones)."""
    labels = project / "data" / "labels.csv"
    good = labels.read_text()
    rows = good.splitlines()
    labels.write_text("\n".join([rows[0], *(row.split(";")[0] + ";" * 7 for row in rows[1:])]) + "\n")
    _fails_cleanly(project, "--mode", "train", fragment=f"{labels}: every zone score of its 8 row(s) is Unknown")
    labels.write_text(good)
    Image.fromarray(np.full((1, 1), 9000, np.uint16)).save(project / "data" / "images" / "1003.png")
    _fails_cleanly(project, "--mode", "check", may_write="data/cache/",
                   fragment=f"{labels}: 1 image(s) far smaller than [Data] image_size 32: 1003 (1x1); the smallest "
                            "that holds six zones at this size is 4x4 px (HxW)")
