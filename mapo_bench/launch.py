"""Where this process stands in a ``torchrun`` / ``accelerate launch`` group (environment only, no torch
import until a barrier is needed)."""

from __future__ import annotations

import os


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) set by torchrun / accelerate launch; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def wait_for_everyone() -> None:
    """Barrier across the launched processes (joins accelerate's CPU/GPU group on first use); no-op alone."""
    if distributed_rank()[1] > 1:
        from accelerate import PartialState

        from mapo_bench.threads import on_cpu

        PartialState(cpu=on_cpu(None)).wait_for_everyone()
