"""SIGKILL at moments drawn from a seed, then --resume: the run completes, every checkpoint on disk
is whole after every kill, and the final history is that of a run never interrupted.

Kill moments are defined by what the run has visibly done (its log, its history file, a temporary
checkpoint file being written), never by time, so a slow or busy machine changes nothing.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path

import pytest

from src.utils.checkpoint import read_checkpoint
from tests.conftest import start_main, write_config

PHASES = ("train", "history", "checkpoint")  # in the order an epoch reaches them
TIMING = ("images_per_second", "epoch_seconds")  # the only history values that may differ


def kill_plan(seed: int, kills: int, epochs: int) -> list[tuple[int, str]]:
    """`kills` moments (epoch, phase), every phase used, in the order a run reaches them. Epoch 1
    is spared: a run killed before its first checkpoint has nothing to resume."""
    rng = random.Random(seed)
    points = [(rng.randint(2, epochs), PHASES[i % len(PHASES)]) for i in range(kills)]
    return sorted(points, key=lambda point: (point[0], PHASES.index(point[1])))


def _epochs_done(run_dir: Path) -> int:
    path = run_dir / "logs" / "validation_history.json"
    return len(json.loads(path.read_text())) if path.is_file() else 0  # written atomically: always whole


def _reached(proc: subprocess.Popen, run_dir: Path, epoch: int, phase: str) -> bool:
    """Whether the run has got to `phase` of `epoch` (or visibly past it)."""
    log = proc.log.read_text(errors="replace")
    if f"epoch {epoch + 1} train" in log:
        return True  # e.g. a checkpoint written between two looks: kill as early as possible after it
    if phase == "train":
        return f"epoch {epoch} train" in log
    if _epochs_done(run_dir) < epoch:
        return False
    return phase == "history" or any(run_dir.glob(".*.pth.*.tmp"))


def _run_dir(root: Path) -> Path | None:
    runs = [p for p in (root / "models").glob("*_train") if p.is_dir()]
    return runs[0] if runs else None


def kill_at(proc: subprocess.Popen, root: Path, epoch: int, phase: str) -> bool:
    """SIGKILL `proc` as soon as it reaches the moment; False if it finished first."""
    while proc.poll() is None:
        run_dir = _run_dir(root)
        if run_dir is not None and _reached(proc, run_dir, epoch, phase):
            proc.kill()
            proc.wait()
            return True
        time.sleep(0.002)  # a poll interval, not a moment: the moment is what the files show
    return False


def assert_checkpoints_whole(run_dir: Path) -> None:
    for path in run_dir.glob("*.pth"):
        state = read_checkpoint(path)  # raises on a truncated or unreadable file
        assert {"model", "optimizer", "epoch"} <= set(state), path


def history(run_dir: Path) -> list[dict]:
    logs = run_dir / "logs"
    rows = zip(json.loads((logs / "training_history.json").read_text()),
               json.loads((logs / "validation_history.json").read_text()))
    return [{k: v for k, v in {**t, **v}.items() if k not in TIMING} for t, v in rows]


def kill_and_resume(tmp_path: Path, dataset: Path, seed: int, kills: int, epochs: int) -> None:
    write_config(tmp_path / "config" / "config.ini", dataset, Training={"n_epochs": epochs, "precision": "fp32"},
                 Callbacks={"save_top_k": 2})
    reference = start_main("--mode", "train", "--set", "Training.run_name=reference", cwd=tmp_path)
    proc = start_main("--mode", "train", "--set", "Training.run_name=train", cwd=tmp_path)
    done, leftovers = [], []
    for epoch, phase in kill_plan(seed, kills, epochs):
        if not kill_at(proc, tmp_path, epoch, phase):
            break
        run_dir = _run_dir(tmp_path)
        done.append((epoch, phase, _epochs_done(run_dir)))
        leftovers += [p.name for p in run_dir.glob(".*.tmp")]
        assert_checkpoints_whole(run_dir)
        proc = start_main("--mode", "train", "--resume", str(run_dir), cwd=tmp_path)
    assert proc.wait(timeout=600) == 0, proc.log.read_text()[-3000:]
    assert reference.wait(timeout=600) == 0, reference.log.read_text()[-3000:]
    assert len(done) == kills, f"the run finished before its kills: {done}"

    run_dir = _run_dir(tmp_path)
    (reference_dir,) = (tmp_path / "models").glob("*_reference")
    assert history(run_dir) == history(reference_dir)
    assert_checkpoints_whole(run_dir)
    assert not list(run_dir.rglob(".*.tmp"))  # the resumed runs removed what killed writes left
    assert sorted(p.name for p in run_dir.glob("*.pth")) == sorted(p.name for p in reference_dir.glob("*.pth"))
    assert read_checkpoint(run_dir / "best_model.pth")["epoch"] == read_checkpoint(
        reference_dir / "best_model.pth")["epoch"]
    assert any(".pth." in name for name in leftovers) or not any(p == "checkpoint" for _, p, _ in done), \
        f"no kill landed while a checkpoint was being written: {done}"


def test_three_kills_then_resume_equal_an_uninterrupted_run(tmp_path, tiny_dataset):
    kill_and_resume(tmp_path, tiny_dataset, seed=11, kills=3, epochs=4)


@pytest.mark.long
def test_twenty_kills_then_resume_equal_an_uninterrupted_run(tmp_path, tiny_dataset):
    kill_and_resume(tmp_path, tiny_dataset, seed=2026, kills=20, epochs=8)
