"""Run loggers: metrics.csv, TensorBoard event files and offline W&B runs, read back from disk."""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import json
import socket
import struct
import threading
from pathlib import Path

import pytest
import torch

from src.config.schema import Config
from src.training.loggers import create_loggers, init_wandb_run, metric_tag, resolve_wandb_mode

EPOCHS = [
    {"epoch": 1, "train_loss": 1.5, "lr": 0.01, "grad_norm": 2.0, "val_loss": 1.4, "val_f1_macro": 0.2},
    {"epoch": 2, "train_loss": 1.0, "lr": 0.005, "grad_norm": 1.5, "val_loss": 1.1, "val_f1_macro": 0.35},
    {"epoch": 3, "train_loss": 0.8, "lr": 0.001, "grad_norm": 1.2, "val_loss": 1.2, "val_f1_macro": 0.3,
     "val_qwk": 0.4},
]


def make_config(**logging) -> Config:
    return dataclasses.replace(Config(), logging=dataclasses.replace(Config().logging, **logging))


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_metric_tags_group_train_and_val():
    assert [metric_tag(k) for k in ("train_loss", "val_f1_macro", "val_ahf_accuracy", "lr", "grad_norm")] == [
        "train/loss", "val/f1_macro", "val/ahf_accuracy", "lr", "grad_norm"]


def test_csv_has_every_key_and_resume_replaces_repeated_epochs(tmp_path):
    cfg = make_config()
    with create_loggers(cfg, tmp_path) as loggers:
        for metrics in EPOCHS:
            loggers.log_epoch(metrics["epoch"], metrics)
    columns, rows = read_csv(tmp_path / "logs" / "metrics.csv")
    assert columns == list(EPOCHS[2])  # the union, in order of first appearance
    assert [float(r["val_f1_macro"]) for r in rows] == [m["val_f1_macro"] for m in EPOCHS]
    assert [r["val_qwk"] for r in rows] == ["", "", "0.4"]

    # Resumed from the checkpoint of epoch 2: epoch 3 is trained again and replaces the old row.
    with create_loggers(cfg, tmp_path, resume=True) as loggers:
        for epoch, loss in ((3, 0.7), (4, 0.6)):
            loggers.log_epoch(epoch, {**EPOCHS[2], "epoch": epoch, "train_loss": loss})
    columns, rows = read_csv(tmp_path / "logs" / "metrics.csv")
    assert columns == list(EPOCHS[2])
    assert [(int(r["epoch"]), float(r["train_loss"])) for r in rows] == [(1, 1.5), (2, 1.0), (3, 0.7), (4, 0.6)]

    # A new (not resumed) run writes its own file from scratch.
    with create_loggers(cfg, tmp_path) as loggers:
        loggers.log_epoch(1, EPOCHS[0])
    assert len(read_csv(tmp_path / "logs" / "metrics.csv")[1]) == 1


def test_disabled_loggers_write_nothing(tmp_path):
    with create_loggers(make_config(tensorboard=True), tmp_path, enabled=False) as loggers:
        loggers.log_epoch(1, EPOCHS[0])
    assert not (tmp_path / "logs").exists()


def test_tensorboard_scalars_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config(tensorboard=True)
    with create_loggers(cfg, tmp_path) as loggers:
        for metrics in EPOCHS:
            loggers.log_epoch(metrics["epoch"], metrics)
    with create_loggers(cfg, tmp_path, resume=True) as loggers:  # resumed after epoch 2
        loggers.log_epoch(3, {**EPOCHS[2], "train_loss": 0.7})
    events = EventAccumulator(str(tmp_path / "logs" / "tensorboard")).Reload()
    assert {"train/loss", "val/f1_macro", "val/qwk", "lr", "grad_norm"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("lr")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([0.01, 0.005, 0.001])
    # The resumed run's epoch 3 replaced the first run's.
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([1.5, 1.0, 0.7])
    assert "batch_size = 32" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """W&B without credentials, its home directories in tmp_path, and its server URL pointing at a local
    socket that records every connection: offline runs must make none."""
    import wandb

    server = socket.create_server(("127.0.0.1", 0))
    connections = []

    def accept():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed at teardown
                return
            connections.append(connection.recv(100))
            connection.close()

    threading.Thread(target=accept, daemon=True).start()
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "wandb_home"
    monkeypatch.setenv("NETRC", str(home / "netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "2")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    for name, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(name, str(home / sub))
    wandb.teardown()  # W&B reads its environment once per process setup
    yield connections
    wandb.teardown()
    server.close()


def test_wandb_mode_resolution(wandb_env, monkeypatch):
    assert resolve_wandb_mode("offline") == "offline"
    assert resolve_wandb_mode("online") == "online"
    assert resolve_wandb_mode("auto") == "offline"  # no account: training goes on offline
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"
    assert wandb_env == []  # looking for credentials asks no server


def wandb_records(path: Path) -> list:
    """The records of a .wandb transaction log: a 7-byte header, then LevelDB-log blocks of 32 KiB whose
    chunks (4-byte CRC, 2-byte length, 1-byte type) carry protobuf Records."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, pos, payload = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too short for a chunk header: zero padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: the record is complete
            records.append(Record.FromString(payload))
            payload = b""
    return records


def wandb_logs(wandb_dir: Path, run_id: str) -> list[Path]:
    """The .wandb files of a run's offline segments, in the order written, once W&B has written them out.

    W&B names a segment's folder `offline-run-<start second>-<id>`, with a `-<n>` suffix when a resumed
    segment starts within the same second, so the folder name neither identifies nor orders a segment
    reliably. The file inside is always `run-<id>.wandb`, and each segment is closed before the next opens.
    """
    import wandb

    wandb.teardown()  # run.finish() returns before W&B's service has flushed the file; teardown waits
    return sorted(wandb_dir.glob(f"offline-run-*/run-{run_id}.wandb"), key=lambda f: f.stat().st_mtime_ns)


def of_type(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def history(records: list) -> list[dict]:
    return [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in h.item}
            for h in of_type(records, "history")]


def test_offline_wandb_run_logs_config_metrics_and_best_checkpoint(tmp_path, wandb_env):
    cfg = make_config(wandb_project="csi-tests")  # wandb_mode = auto, no credentials
    run_dir = tmp_path / "20260101_120000_custom_cnn_run"
    best = run_dir / "best_model.pth"
    with create_loggers(cfg, run_dir) as loggers:
        for metrics in EPOCHS[:2]:
            loggers.log_epoch(metrics["epoch"], metrics)
            torch.save({"weights": torch.full((64,), float(metrics["epoch"]))}, best)
            loggers.log_best_checkpoint(best, metrics["epoch"], {"val_f1_macro": metrics["val_f1_macro"]})
    run_id = (run_dir / "logs" / "wandb_run_id").read_text().strip()
    assert run_id.startswith(run_dir.name)
    [log_file] = wandb_logs(run_dir / "logs" / "wandb", run_id)
    records = wandb_records(log_file)

    [run] = of_type(records, "run")
    assert (run.run_id, run.project, run.display_name) == (run_id, "csi-tests", run_dir.name)
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["Training"]["batch_size"] == cfg.training.batch_size
    assert config["Model"]["model_arch"] == cfg.model.model_arch

    rows = history(records)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["train/loss"] for r in rows] == [m["train_loss"] for m in EPOCHS[:2]]
    assert [r["lr"] for r in rows] == [m["lr"] for m in EPOCHS[:2]]
    assert [r["val/f1_macro"] for r in rows] == [m["val_f1_macro"] for m in EPOCHS[:2]]

    # One artifact, of the best (last written) checkpoint, staged for upload until `wandb sync`.
    [artifact] = of_type(records, "artifact")
    assert (artifact.name, artifact.type) == (f"model-{run_id}", "model")
    assert {"best", "epoch-2"} <= set(artifact.aliases)
    assert json.loads(artifact.metadata) == {"epoch": 2, "val_f1_macro": 0.35}
    [entry] = artifact.manifest.contents
    assert (entry.path, entry.size) == ("best_model.pth", best.stat().st_size)
    assert entry.digest == base64.b64encode(hashlib.md5(best.read_bytes()).digest()).decode()
    assert Path(entry.local_path).read_bytes() == best.read_bytes()
    assert of_type(records, "exit")[0].exit_code == 0

    # Resuming continues the same W&B run in a new offline segment (`wandb sync` joins them); an
    # interrupted training marks it failed.
    with pytest.raises(KeyboardInterrupt), create_loggers(cfg, run_dir, resume=True) as loggers:
        loggers.log_epoch(3, EPOCHS[2])
        raise KeyboardInterrupt
    segments = wandb_logs(run_dir / "logs" / "wandb", run_id)
    assert len(segments) == 2
    resumed = wandb_records(segments[-1])
    assert [r["epoch"] for r in history(resumed)] == [3]
    assert of_type(resumed, "exit")[0].exit_code == 1
    assert wandb_env == []  # offline: not one connection to the W&B server


def test_auto_mode_logs_offline_when_the_server_is_unreachable(tmp_path, wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # looks logged in ...
    cfg = make_config(wandb_project="csi-tests")
    run = init_wandb_run(cfg, "trial-1", "study", {"lr": 0.01}, tmp_path / "wandb")
    assert wandb_env  # ... so online was tried first (and the fake server hung up)
    assert run.offline
    run.log({"loss": 1.0})
    run.finish()
    [log_file] = wandb_logs(tmp_path / "wandb" / "wandb", run.id)
    [record] = of_type(wandb_records(log_file), "run")
    assert (record.display_name, record.run_group) == ("trial-1", "study")
