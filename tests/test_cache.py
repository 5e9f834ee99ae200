"""The sharded image cache: entries per file, resume after a kill, parts, old formats, the view."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from src.data.cache import CacheSettings, build_cache, prebuild_part, register_decoder, view
from src.data.cache.build import shard_images
from src.data.cache.keys import decode_image
from tests.conftest import REPO, finish, run_main, start_main, write_config, write_png_dataset

SETTINGS = CacheSettings(image_size=8, resize_mode="plain", clip_low_percentile=0.5,
                         clip_high_percentile=99.5, dtype="uint16")
GATED = dataclasses.replace(SETTINGS, decoder="gated")
GATE_ENV = "CSI_TEST_CACHE_GATE"  # "<file name>:<fifo>": decoding that file waits on the fifo


@register_decoder("gated")
def decode_gated(path: Path, settings: CacheSettings):
    """The image decoder, except that the file named in $CSI_TEST_CACHE_GATE blocks (forever, unless
    the test writes) on a fifo: a builder the test can kill at a known image."""
    name, _, fifo = os.environ.get(GATE_ENV, "").partition(":")
    if path.name == name:
        with open(fifo, "rb") as gate:  # returns once the test opens the other end
            gate.read()
    return decode_image(path, dataclasses.replace(settings, decoder="image"))


def start_gated_build(tmp_path: Path, paths: list[Path], gate: Path, **popen) -> subprocess.Popen:
    """build_cache of `paths` with the GATED decoder into tmp_path/cache, in a child process that waits at
    file `gate` on the fifo tmp_path/gate (made by the first call) and prints how many images it decoded."""
    fifo, listing = tmp_path / "gate", tmp_path / "paths.json"
    if not fifo.exists():
        os.mkfifo(fifo)
        listing.write_text(json.dumps([str(p) for p in paths]))
    script = ("import json, sys; import tests.test_cache as t; from src.data.cache import build_cache; "
              "print('decoded', build_cache(json.load(open(sys.argv[1])), t.GATED, sys.argv[2], workers=1).decoded)")
    return subprocess.Popen([sys.executable, "-c", script, str(listing), str(tmp_path / "cache")], cwd=REPO,
                            env={**os.environ, GATE_ENV: f"{gate.name}:{fifo}", "PYTHONPATH": str(REPO)}, **popen)


def release_if_gone(builder: subprocess.Popen, fifo: Path) -> None:
    """Open the fifo's other end once `builder` exits: one that dies before its gate must not leave the
    test's open of the fifo waiting."""
    def release() -> None:
        builder.wait()
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))

    threading.Thread(target=release, daemon=True).start()


def png_paths(root: Path, count: int, seed: int = 0) -> list[Path]:
    labels = write_png_dataset(root, np.random.default_rng(seed).integers(0, 4, (count, 6)), size=16, seed=seed)
    return sorted((labels.parent / "images").glob("*.png"))


def store_files(cache) -> list[str]:
    return sorted(p.name for p in cache.path.iterdir())


def test_a_new_list_decodes_only_its_new_and_changed_files(tmp_path):
    paths = png_paths(tmp_path / "a", 40)
    more = png_paths(tmp_path / "b", 5, seed=1)
    first = build_cache(paths, SETTINGS, tmp_path / "cache", workers=1)
    assert first.decoded == 40 and first.images.shape == (40, 8, 8)

    grown = paths[:30] + more + paths[30:]
    added = build_cache(grown, SETTINGS, tmp_path / "cache", workers=1)
    fresh = build_cache(grown, SETTINGS, tmp_path / "fresh", workers=1)
    assert added.decoded == 5 and added.path == first.path
    np.testing.assert_array_equal(added.images, fresh.images)
    np.testing.assert_array_equal(added.original_shapes, fresh.original_shapes)

    Image.fromarray(np.full((16, 16), 9000, np.uint16)).save(paths[7])  # new content, new size
    changed = build_cache(paths, SETTINGS, tmp_path / "cache", workers=1)
    assert changed.decoded == 1
    np.testing.assert_array_equal(changed.images[7], decode_image(paths[7], SETTINGS)[0])
    np.testing.assert_array_equal(changed.images[8:], first.images[8:])

    removed = build_cache(paths[10:], SETTINGS, tmp_path / "cache", workers=1)
    assert removed.decoded == 0 and removed.hit
    np.testing.assert_array_equal(removed.images, changed.images[10:])


def test_a_file_listed_twice_is_decoded_once_and_failures_are_kept(tmp_path):
    paths = png_paths(tmp_path / "data", 6)
    paths[2].write_bytes(b"not a png")
    listed = [*paths, paths[0]]
    first = build_cache(listed, SETTINGS, tmp_path / "cache", workers=1)
    assert first.decoded == 6 and set(first.failures) == {2} and "cannot decode" in first.failures[2]
    np.testing.assert_array_equal(first.images[6], first.images[0])
    assert first.original_shapes[2].tolist() == [0, 0] and first.original_shapes[0].tolist() == [16, 16]
    again = build_cache(listed, SETTINGS, tmp_path / "cache", workers=1)
    assert again.hit and again.failures == first.failures  # a bad file is not retried until it changes


def test_a_build_killed_halfway_keeps_its_finished_shards_and_resumes(tmp_path):
    paths = png_paths(tmp_path / "data", 48)
    per_shard = shard_images(len(paths), GATED)
    gate = paths[per_shard + per_shard // 2]  # in the middle of the second shard
    reference = build_cache(paths, SETTINGS, tmp_path / "reference", workers=1)
    builder = start_gated_build(tmp_path, paths, gate)
    fifo = tmp_path / "gate"
    release_if_gone(builder, fifo)
    with open(fifo, "wb"):  # returns once the builder has opened the other end: it is at the gate
        assert builder.poll() is None, f"the builder exited ({builder.returncode}) before reaching {gate.name}"
        builder.send_signal(signal.SIGKILL)
        assert builder.wait() == -signal.SIGKILL

    store = next((tmp_path / "cache").iterdir())
    manifests = list(store.glob("*.json"))
    assert len(manifests) == 1 and len(json.loads(manifests[0].read_text())["keys"]) == per_shard
    assert list(store.glob(".*.partial"))  # the shard it was writing when killed
    for path in paths[:per_shard]:  # garbage of the same size and mtime: decoding these again would show
        stat = path.stat()
        path.write_bytes(b"\0" * stat.st_size)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    resumed = build_cache(paths, GATED, tmp_path / "cache", workers=1)
    assert resumed.decoded == len(paths) - per_shard and not resumed.failures
    np.testing.assert_array_equal(resumed.images, reference.images)
    assert not list(store.glob(".*"))  # the killed writer's partial shard is gone


def test_parts_prebuilt_by_separate_jobs_are_disjoint_and_complete(tmp_path):
    paths = png_paths(tmp_path / "data", 40)
    first, left = prebuild_part(paths, SETTINGS, tmp_path / "cache", 0, 2, workers=1)
    assert 0 < first < 40 and left == 40 - first
    again, _ = prebuild_part(paths, SETTINGS, tmp_path / "cache", 0, 2, workers=1)
    second, left = prebuild_part(paths, SETTINGS, tmp_path / "cache", 1, 2, workers=1)
    assert again == 0 and first + second == 40 and left == 0
    assert build_cache(paths, SETTINGS, tmp_path / "cache", workers=1).hit


def test_an_old_format_cache_is_removed_and_rebuilt(tmp_path):
    paths = png_paths(tmp_path / "data", 5)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    np.save(cache_dir / "0123abcd.npy", np.full((5, 8, 8), 7, np.uint16))  # what version 1 wrote
    (cache_dir / "0123abcd.json").write_text(json.dumps({"version": 1, "files": [str(p) for p in paths],
                                                         "failures": {}, "shapes": [[16, 16]] * 5}))
    (cache_dir / "0123abcd.lock").touch()
    cache = build_cache(paths, SETTINGS, cache_dir, workers=1)
    assert cache.decoded == 5 and sorted(p.name for p in cache_dir.iterdir()) == [cache.path.name]
    np.testing.assert_array_equal(cache.images, build_cache(paths, SETTINGS, tmp_path / "fresh", workers=1).images)


def test_the_view_reads_rows_batches_and_slices_across_shards_and_pickles(tmp_path, monkeypatch):
    monkeypatch.setattr(view, "OPEN_FILES", 1)  # one shard open at a time: most reads open one again
    paths = png_paths(tmp_path / "data", 40)
    images = build_cache(paths, SETTINGS, tmp_path / "cache", workers=1).images
    assert len(set(images.shards.tolist())) > 1  # rows really come from several shards
    every = np.stack([decode_image(p, SETTINGS)[0] for p in paths])
    rows = [39, 0, 17, 17, 5]
    np.testing.assert_array_equal(images[rows], every[rows])
    np.testing.assert_array_equal(images[np.int64(21)], every[21])
    np.testing.assert_array_equal(images[30:], every[30:])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(images))[rows], every[rows])
    assert images.nbytes == every.nbytes and images.dtype == every.dtype and len(images._open) == 1


def test_check_shard_jobs_prebuild_disjoint_parts_then_check_reuses_them(tmp_path):
    write_png_dataset(tmp_path / "data", np.random.default_rng(3).integers(0, 4, (40, 6)), size=16)
    write_config(tmp_path / "config" / "config.ini", tmp_path / "data", Data={"image_size": 16})
    jobs = [start_main("--mode", "check", "--shard", f"{k}/2", cwd=tmp_path) for k in (1, 2)]
    finish(jobs)
    decoded = [int(re.search(r"(\d+) image\(s\) decoded now", job.log.read_text()).group(1)) for job in jobs]
    assert sum(decoded) == 40 and all(decoded)  # parts are disjoint and both non-empty
    result = run_main("--mode", "check", cwd=tmp_path)
    assert result.returncode == 0 and "(0 decoded now, 40 reused;" in result.stdout, result.stdout
    bad = run_main("--mode", "check", "--shard", "3/2", cwd=tmp_path)
    assert bad.returncode == 2 and "'3/2' is not K/N with 1 <= K <= N" in bad.stderr


def test_processes_of_one_machine_take_turns_one_decodes_while_the_other_waits(tmp_path):
    """Two ranks of a node building one cache: the first decodes everything (with a pool of the node's
    cores when worthwhile) while the second waits for it, then finds every image there. Held at a gate
    in its first image, the first builder has taken no shard but the first, so a second builder that
    did not wait would decode the other shards itself."""
    paths = png_paths(tmp_path / "data", 48)
    assert len(paths) // shard_images(len(paths), GATED) == 3

    def builder() -> subprocess.Popen:
        return start_gated_build(tmp_path, paths, paths[0], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first, fifo = builder(), tmp_path / "gate"
    release_if_gone(first, fifo)
    second, seen = None, []
    try:
        with open(fifo, "wb"):  # returns once the first builder is at the gate, its turn taken
            assert first.poll() is None, f"the first builder exited ({first.returncode}) before the gate"
            second = builder()

            def watch() -> None:
                seen.append(next((line for line in second.stderr if "waiting for it" in line), ""))

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            watcher.join(timeout=120)  # a bound, not a moment: the line comes as soon as it waits
            assert seen and seen[0], "the second builder did not wait for the first"
        # The gate is open: the first finishes, then the second, which finds the images decoded.
        outputs = [proc.communicate(timeout=120)[0] for proc in (first, second)]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in (first, second)] == [0, 0]
    assert [out.split()[-1] for out in outputs] == [str(len(paths)), "0"]
    assert "on this machine is decoding images into this cache" in seen[0]
    np.testing.assert_array_equal(build_cache(paths, SETTINGS, tmp_path / "reference", workers=1).images,
                                  build_cache(paths, GATED, tmp_path / "cache", workers=1).images)
