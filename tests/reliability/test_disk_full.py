"""A full disk, on real small filesystems (tmpfs): refused before training when the checkpoints
cannot fit, otherwise stopped at the failed write with one message and a resumable run."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from src.config.loader import load_config
from src.training.trainer import train_model
from src.utils.checkpoint import read_checkpoint
from src.utils.errors import OutputError
from tests.conftest import run_main, start_main, write_config


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of the requested size (MiB) at tmp_path/disk; unmounted afterwards."""
    mounted = []

    def mount(mib: int) -> Path:
        path = tmp_path / "disk"
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(directory: Path) -> Path:
    """Write one file until the filesystem has no byte left."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 20))
        except OSError:
            pass
    return filler


def test_too_small_a_disk_is_refused_before_training(tmp_path, tiny_dataset, small_disk):
    disk = small_disk(20)  # one checkpoint of the small CNN with Adam state is ~25 MB
    path = write_config(tmp_path / "config" / "config.ini", tiny_dataset,
                        Training={"output_dir": disk / "models", "n_epochs": 1})
    with pytest.raises(OutputError, match=r"not enough free space for this run's checkpoints.*needs \d+ MB"):
        train_model(load_config(path, env={}))
    assert list(disk.iterdir()) == []  # no run directory left behind


def test_disk_filling_up_stops_at_the_write_and_the_run_resumes(tmp_path, tiny_dataset, small_disk):
    disk = small_disk(80)
    write_config(tmp_path / "config" / "config.ini", tiny_dataset,
                 Training={"output_dir": disk / "models", "n_epochs": 3, "precision": "fp32"})
    proc = start_main("--mode", "train", cwd=tmp_path)
    while not list(disk.glob("models/*/last_model.pth")):  # epoch 1 is saved: now the disk fills up
        assert proc.poll() is None, proc.log.read_text()[-3000:]
        time.sleep(0.01)
    filler = fill(disk)
    assert proc.wait(timeout=300) == 2
    log = proc.log.read_text()
    (run,) = (disk / "models").iterdir()
    assert "No space left on device" in log and f"continue with --resume {run}" in log
    assert "Traceback" not in log
    assert read_checkpoint(run / "last_model.pth")["epoch"] == 1
    assert not list(run.rglob(".*.tmp"))  # the failed write left no partial file

    filler.unlink()
    resumed = run_main("--mode", "train", "--resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_checkpoint(run / "last_model.pth")["epoch"] == 3
