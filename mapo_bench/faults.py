"""Fault injection (issue 15): named points where a test can SIGKILL a stage, or fill its disk, deterministically.

``MAPO_BENCH_FAULT=<stage>:<point>`` (or ``...@N``: at the N-th time the point is reached) makes
:func:`point` kill its process group with SIGKILL there (only the process itself when it does not lead a
group, so a test harness in the same group survives). ``<stage>:<point>!enospc[@N]`` raises the error a
full disk raises instead (``OSError(ENOSPC)`` naming the file being written), which the command reports in
one line. ``MAPO_BENCH_FAULT_ONCE=FILE`` fires the fault only in the first process to reach it (which creates
FILE): a job that is retried in a fresh process (a Ray task) then passes. Unset, :func:`point` costs one
dictionary lookup.
The points (``POINTS``) sit just before or after the writes a crash could tear: inside a checkpoint write,
inside a cache shard's or an image's write (the temp file written, not renamed), between a shard's pieces and its rename, between the last image and the index, before an output folder's
rename.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

ENV_VAR = "MAPO_BENCH_FAULT"
ONCE_VAR = "MAPO_BENCH_FAULT_ONCE"
POINTS = (
    "build:after-batch", "build:before-shard-rename", "build:before-manifest",
    "train:after-cache", "train:inside-cache-shard", "train:after-step", "train:inside-checkpoint",
    "train:after-checkpoint", "train:before-export-rename",
    "sample:inside-image", "sample:after-batch", "sample:before-index",
    "eval:after-batch", "eval:before-rename",
    "mismatch:after-reference", "mismatch:before-write",
    "report:before-rename",
    "run:before-marker", "run:after-marker", "run:before-selection",
)
_reached: dict[str, int] = {}


def point(name: str, writing: str | Path | None = None) -> None:
    """Die here with SIGKILL if ``$MAPO_BENCH_FAULT`` names this point (and this is its N-th visit), or raise a
    full disk's error for ``writing`` (what the stage is writing at this point) if it names it with ``!enospc``."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    target, _, kind = target.partition("!")
    if target != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(nth or 1):
        once = os.environ.get(ONCE_VAR)
        if once:
            try:
                Path(once).touch(exist_ok=False)
            except FileExistsError:
                return
        if kind == "enospc":
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected at {name})",
                          str(writing) if writing is not None else None)
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
