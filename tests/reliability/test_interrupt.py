"""Ctrl-C during training: the step finishes, a checkpoint is written, exit 130 with the exact
command that resumes, and that command completes the run."""

from __future__ import annotations

import json
import re
import shlex
import signal
import time

from src.utils.checkpoint import read_checkpoint
from tests.conftest import run_main, start_main, write_config

BATCHES = 8  # per epoch: 16 training images in batches of 2


def test_ctrl_c_checkpoints_mid_epoch_and_the_printed_command_resumes(tmp_path, tiny_dataset):
    write_config(tmp_path / "config" / "run.ini", tiny_dataset,
                 Training={"n_epochs": 3, "batch_size": 2, "precision": "fp32"})
    proc = start_main("--mode", "train", "--config", "config/run.ini", cwd=tmp_path)
    while "epoch 2 train" not in proc.log.read_text():  # the second epoch has started
        assert proc.poll() is None, proc.log.read_text()[-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130
    log = proc.log.read_text()
    assert "Traceback" not in log
    (run_dir,) = (tmp_path / "models").iterdir()
    state = read_checkpoint(run_dir / "last_model.pth")
    assert state["epoch"] == 1 and 1 <= state["next_batch"] < BATCHES  # stopped inside epoch 2

    (command,) = re.findall(r"Resume with: (.+)", log)
    args = shlex.split(command)
    assert args == ["python", "main.py", "--mode", "train", "--resume", str(run_dir), "--config", "config/run.ini"]
    resumed = run_main(*args[2:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"after epoch 1 and {state['next_batch']} batches of the next" in resumed.stderr
    epochs = [h["epoch"] for h in json.loads((run_dir / "logs" / "validation_history.json").read_text())]
    assert epochs == [1, 2, 3]
    final = read_checkpoint(run_dir / "last_model.pth")
    assert (final["epoch"], final["next_batch"]) == (3, 0)
