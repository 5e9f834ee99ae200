"""No secret reaches a file or a message: the W&B API key and a database password in the storage
URL are searched for in every byte a training run and a failed study write, and in their output."""

from __future__ import annotations

import os
from pathlib import Path

from src.utils.secrets import mask_secrets
from tests.conftest import CACHE_HOMES, run_main, write_config

API_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B key; never sent anywhere
PASSWORD = "pw-Zq81-secret"
STORAGE = f"postgresql://csi:{PASSWORD}@127.0.0.1:1/optuna"  # port 1: nothing listens


def files_holding(root: Path, secret: str, exclude: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p != exclude and secret.encode() in p.read_bytes()]


def test_secrets_never_reach_logs_snapshots_checkpoints_or_messages(tmp_path, tiny_dataset):
    config = write_config(tmp_path / "config" / "config.ini", tiny_dataset, Training={"n_epochs": 1},
                          Hyperopt={"storage": STORAGE}, Logging={"tensorboard": "true", "wandb_project": "csi"})
    env = {"WANDB_API_KEY": API_KEY, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_DIR": str(tmp_path / "wandb-home")}
    trained = run_main("--mode", "train", "--storage", STORAGE, cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    study = run_main("--mode", "hyperopt", "--n-trials", "1", cwd=tmp_path, env=env)
    assert study.returncode == 2 and "cannot open it" in study.stderr
    assert "csi:***@127.0.0.1:1/optuna" in study.stderr  # the URL shown, its password not

    (run,) = (tmp_path / "models").iterdir()
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {f"models/{run.name}/config.ini", f"models/{run.name}/best_model.pth", "logs/csi_predictor.log"} <= written
    assert any("/logs/tensorboard/" in p for p in written) and any("/wandb/" in p for p in written)
    for secret in (PASSWORD, API_KEY):
        for root in [tmp_path, *(Path(os.environ[name]) for name in CACHE_HOMES)]:  # the caches too
            assert files_holding(root, secret, exclude=config) == []
        for output in (trained.stdout, trained.stderr, study.stdout, study.stderr):
            assert secret not in output
    assert "storage = postgresql://csi:***@127.0.0.1:1/optuna" in (run / "config.ini").read_text()


def test_mask_secrets_hides_url_passwords_only():
    assert mask_secrets("mysql+pymysql://u:p%40ss@db.local/optuna and sqlite:///x.db") == \
        "mysql+pymysql://u:***@db.local/optuna and sqlite:///x.db"
    assert mask_secrets("redis://:token@h:6379/0, postgresql://host/db") == "redis://:***@h:6379/0, postgresql://host/db"
