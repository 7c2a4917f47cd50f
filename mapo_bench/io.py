"""Atomic outputs and stage manifests.

Every stage writes into a temporary sibling folder and renames it into place, so an output that
exists is complete. ``manifest.json`` records config, config hash, versions, counts and timings; a
stage whose manifest matches its config hash is skipped (resume).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def write_bytes_atomic(path: str | Path, data: bytes, fault: str | None = None) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``.

    ``fault``: a fault point reached between the written temp file and its rename (issue 15's kill tests)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        mask = os.umask(0)  # mkstemp makes 0600 files; give the usual 0666 & ~umask
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        if fault:
            from mapo_bench import faults

            faults.point(fault, path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_png_atomic(path: str | Path, image: Any, fault: str | None = None) -> Path:
    """A PIL image as a PNG file (lossless: toy images keep their pixel cues), written atomically."""
    import io as stdlib_io

    buffer = stdlib_io.BytesIO()
    image.save(buffer, format="PNG")
    return write_bytes_atomic(path, buffer.getvalue(), fault)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    from mapo_bench.errors import MapoBenchError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MapoBenchError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise MapoBenchError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False, written_by: str | None = None) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on success it replaces ``final`` in one rename.

    ``written_by``: a file the stage always writes into ``final``; an existing non-empty ``final``
    without it was not written by the stage and is never replaced (a mistyped ``--out`` must not delete
    someone's folder). On an exception the temp folder is removed and ``final`` is left as it was.
    """
    from mapo_bench.errors import MapoBenchError

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise MapoBenchError(f"{final} already exists; pass --overwrite to replace it")
    if written_by and final.is_dir() and any(final.iterdir()) and not (final / written_by).is_file():
        raise MapoBenchError(f"{final} exists and was not written by this stage (it has no {written_by}); "
                             "choose another --out")
    if final.exists() and not final.is_dir():
        raise MapoBenchError(f"{final} exists and is not a folder; choose another --out")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            trash = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide results, for manifests and bug reports."""
    from importlib import metadata

    import mapo_bench

    names = ["torch", "diffusers", "transformers", "accelerate", "peft", "open_clip_torch", "datasets",
             "safetensors", "numpy", "pandas", "pyarrow", "pillow", "pydantic"]
    versions = {"mapo_bench": mapo_bench.__version__, "python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def make_manifest(config: Any, config_hash: str, counts: dict[str, Any] | None = None,
                  timings: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """The manifest dict every stage writes: config, hash, versions, counts, timings, anything else."""
    from pydantic import BaseModel

    config_data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    return {
        "config": config_data,
        "config_hash": config_hash,
        "versions": package_versions(),
        "counts": counts or {},
        "timings": timings or {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def manifest_matches(folder: str | Path, config_hash: str) -> bool:
    """True when ``folder/manifest.json`` exists and records ``config_hash`` (the stage can be skipped)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("config_hash") == config_hash
    except (json.JSONDecodeError, OSError):
        return False


class Stopwatch:
    """Named wall-clock timings for manifests."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def time(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


@contextlib.contextmanager
def hold_lock(path: str | Path, shared: bool = False, enabled: bool = True,
              busy: str = "in use by another process", wait: bool = False) -> Iterator[None]:
    """Hold an advisory ``flock`` on ``path`` (created if missing) for the block, or fail at once with
    ``MapoBenchError(busy)``. The kernel drops it when the process ends, even on kill -9, so a crash
    never leaves a stale lock. ``shared``: many holders at once, none exclusive. ``enabled=False``: no-op
    (ranks other than 0 under a launcher). ``wait``: a cache's lock; say ``busy`` once on stderr and wait
    for the holder instead of failing (it may be filling what this process wants)."""
    if not enabled:
        yield
        return
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            from mapo_bench.errors import MapoBenchError

            if not wait:
                raise MapoBenchError(busy) from None
            print(busy, file=sys.stderr, flush=True)
            fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def one_writer(stage: str, output: Any) -> Any:
    """Decorate a stage entry ``fn(cfg)`` so that one process at a time writes its output folder
    (``output(cfg)``): a second ``train`` / ``build-dataset`` / ``sample`` / ``eval`` into the same folder is
    refused in one line, as two ``run``s into one run folder are. The lock is a hidden sibling file
    (``.<name>.lock``) held with :func:`hold_lock` by the main process only (RANK 0 under a launcher)."""
    import functools

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        def inner(cfg: Any, *args: Any, **kwargs: Any) -> Any:
            out = output(cfg)
            if out is None:
                return fn(cfg, *args, **kwargs)
            out = Path(out)
            busy = f"{out}: another `mapo-bench {stage}` is writing this folder; wait for it to finish or choose another --out"
            with hold_lock(out.with_name(f".{out.name}.lock"), enabled=os.environ.get("RANK", "0") == "0", busy=busy):
                return fn(cfg, *args, **kwargs)
        return inner
    return wrap
