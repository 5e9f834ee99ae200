"""Shared fixtures: a tiny real dataset on disk, a runner for `python main.py`, a headless Chromium."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ZONE_COLUMNS = "right_sup;left_sup;right_mid;left_mid;right_inf;left_inf"
# Where this project and its libraries keep what outlives a process (the precision picks,
# downloaded weights, W&B and matplotlib state). Tests never see the user's: see _empty_caches.
CACHE_HOMES = ("XDG_CACHE_HOME", "TORCH_HOME", "HF_HOME", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR",
               "WANDB_DATA_DIR", "MPLCONFIGDIR")


def pytest_configure(config) -> None:
    """Under `pytest -n N` the N worker processes share the machine's cores: each runs torch, and the
    processes its tests start, on its share: oversubscribed cores make oneDNN's threads wait on each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def _cache_homes(root: Path) -> dict[str, str]:
    homes = {name: root / name.lower() for name in CACHE_HOMES}
    for home in homes.values():
        home.mkdir(parents=True)
    return {name: str(home) for name, home in homes.items()}


@pytest.fixture(scope="session", autouse=True)
def _suite_caches(tmp_path_factory):
    """Empty cache homes for the whole session, so that fixtures shared by a module (which are set
    up before any test's own) never read or fill the user's caches either."""
    saved = {name: os.environ.get(name) for name in CACHE_HOMES}
    os.environ.update(_cache_homes(tmp_path_factory.mktemp("suite-caches")))
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _empty_caches(_suite_caches, tmp_path_factory, monkeypatch):
    """Every test starts with its own empty cache homes, which the processes it starts inherit, and
    leaves the environment as it found it (W&B's agent, for one, sets WANDB_RUN_ID in os.environ): no
    test depends on what an earlier one (or an earlier run on this machine) left behind."""
    environment = dict(os.environ)
    for name, home in _cache_homes(tmp_path_factory.mktemp("caches")).items():
        monkeypatch.setenv(name, home)
    yield
    os.environ.clear()
    os.environ.update(environment)


def write_png_dataset(root: Path, scores: np.ndarray, size: int = 32, patients: list[str] | None = None,
                      seed: int = 0) -> Path:
    """Labels CSV + 16-bit PNGs whose zone brightness follows the score (4 -> empty cell)."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = [f"FileID;{ZONE_COLUMNS}" + (";PatientID" if patients else "")]
    for i, row in enumerate(scores):
        pixels = rng.normal(8000, 1500, (size, size))
        for z, score in enumerate(row):
            r, c = divmod(z, 2)
            band = slice(r * size // 3, (r + 1) * size // 3)
            half = slice(c * size // 2, (c + 1) * size // 2)
            pixels[band, half] += 12000 * (score if score != 4 else rng.integers(0, 4))
        Image.fromarray(np.clip(pixels, 0, 65535).astype(np.uint16)).save(images / f"{1000 + i}.png")
        cells = ["" if s == 4 else str(int(s)) for s in row]
        lines.append(";".join([str(1000 + i), *cells] + ([patients[i]] if patients else [])))
    labels = root / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    return labels


def write_config(path: Path, data_root: Path, **sections: dict) -> Path:
    """A small config.ini pointing at `data_root`; `sections` adds or overrides keys."""
    base = {
        "Data": {"labels_csv": data_root / "labels.csv", "image_dir": data_root / "images",
                 "image_size": 32, "cache_dir": data_root / "cache"},
        # fp32: exact arithmetic, and no precision probe in every test (those of auto set it)
        "Training": {"output_dir": path.parent.parent / "models", "batch_size": 8, "n_epochs": 2,
                     "precision": "fp32"},
        "Model": {"model_arch": "custom_cnn", "pretrained": "false"},
        "Logging": {"log_dir": path.parent.parent / "logs"},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) for s, kv in base.items()))
    return path


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """24 images in 12 patients with every class present; returns the data directory."""
    return write_tiny_dataset(tmp_path / "data")


def write_tiny_dataset(root: Path) -> Path:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, (24, 6))
    scores[rng.random((24, 6)) < 0.1] = 4
    write_png_dataset(root, scores, patients=[f"P{i // 2}" for i in range(24)])
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The tiny_dataset images shared by a module's tests (hyperopt, sweeps)."""
    return write_tiny_dataset(tmp_path_factory.mktemp("shared_data"))


def run_main(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python main.py ARGS` in `cwd` as a user would."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def invoke_main(*args: str, cwd: Path):
    """`main.py ARGS` in this process, through click's test runner: the same command line as run_main
    without a Python start-up, whose imports (torch's compiler among them) cost seconds. For a test's
    steps after its first real `main.py` process; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from src.cli.main import cli

    previous = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, list(args), prog_name="main.py")
    finally:
        os.chdir(previous)


def install_debian_package(package: str, present) -> str:
    """Install Debian's `package` unless `present()` already holds; returns '' or why it failed.

    Test processes running side by side (pytest -n) take turns: apt-get holds dpkg's lock, and a second
    install would fail on it, so they queue on a lock file and the later ones find the package there."""
    from filelock import FileLock

    with FileLock(Path(tempfile.gettempdir()) / "csi-predictor-apt.lock"):
        if present():
            return ""
        if not shutil.which("apt-get") or os.geteuid() != 0:
            return f"cannot be (needs apt-get as root): apt-get install {package}"
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
            if done.returncode != 0:
                return f"`{' '.join(command)}` failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}"
        return "" if present() else f"`apt-get install {package}` did not install it"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable Chromium; Debian's package is installed when missing (as root)."""
    sys.path.insert(0, str(REPO / "scripts"))
    from chromium import find_chromium

    failed = install_debian_package("chromium", find_chromium)
    if failed:
        pytest.skip(f"chromium is not installed and {failed}")
    return find_chromium()


def start_main(*args: str, cwd: Path) -> subprocess.Popen:
    """`python main.py ARGS` in the background; output goes to a file so a full pipe never blocks it.

    One thread each: workers running side by side on a small machine would otherwise fight over its cores.
    """
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = tempfile.NamedTemporaryFile("w", dir=cwd, prefix="worker", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, str(REPO / "main.py"), *args], cwd=cwd, env=full_env, stdout=out,
                            stderr=subprocess.STDOUT)
    proc.log = Path(out.name)  # what it printed
    return proc


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> None:
    for proc in procs:
        assert proc.wait(timeout=timeout) == 0, proc.log.read_text()[-3000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server on loopback (Debian's package, installed if missing)."""
    failed = install_debian_package("postgresql", lambda: glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if failed:
        pytest.skip(f"PostgreSQL is not installed and {failed}")
    bin_dir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="csi-postgres-"))
    as_owner = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_owner, *cmd], check=True, capture_output=True, timeout=120)

    run(str(bin_dir / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres")
    run(str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"), "-w", "start",
        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1")
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna")
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def log_messages():
    """Messages the tool logs (loguru) while the test runs."""
    from src.utils.logging import logger

    messages: list[str] = []
    handler = logger.add(messages.append, level="DEBUG", format="{level} {message}")
    yield messages
    logger.remove(handler)
