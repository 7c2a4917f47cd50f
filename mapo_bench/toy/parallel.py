"""Data parallelism for toy pretraining on local CPU processes (torch.distributed, gloo).

Why not DDP: every rank makes the *same* random draws for the whole batch and keeps only its slice,
and gradients are averaged over ranks before the (identical) optimizer step. So the data stream,
the EMA and the checkpoints do not depend on the process count; w processes give the full-batch
gradient up to float summation order (deterministic for a fixed process and thread count).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mapo_bench.errors import MapoBenchError


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among ``world`` data-parallel ranks (``world == 1``: no communication)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local(self, batch_size: int) -> slice:
        """The slice of a full batch that this rank computes (batches divide evenly; checked in config)."""
        share = batch_size // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def average_gradients(self, params: list[Any]) -> None:
        """Replace each gradient by its mean over ranks (one flat all-reduce)."""
        if self.world == 1:
            return
        import torch
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def shared_map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``[fn(x) for x in items]``, each rank computing every ``world``-th item (same result, same order)."""
        mine = [fn(x) for x in items[self.rank :: self.world]]
        parts = self.gather(mine)
        out: list[Any] = [None] * len(items)
        for rank, part in enumerate(parts):
            out[rank :: self.world] = part
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    import torch.distributed as dist

    from mapo_bench.threads import configure_threads

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    configure_threads()
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(ProcessGroup(rank, world), *args)
        # Leave together: a rank that tears down gloo while rank 0 is still writing can abort (SIGABRT).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_in_processes(fn: Callable[..., Any], processes: int, *args: Any) -> None:
    """Run ``fn(group, *args)`` in ``processes`` spawned CPU processes joined by gloo; ``processes == 1``
    runs it here. A failure in any rank becomes one MapoBenchError naming the rank and its last line."""
    if processes == 1:
        fn(ProcessGroup(), *args)
        return
    import torch.multiprocessing as mp

    try:
        mp.start_processes(_worker, args=(processes, _free_port(), fn, args), nprocs=processes, join=True,
                           start_method="spawn")
    except mp.ProcessRaisedException as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        raise MapoBenchError(f"toy pretrain: {lines[0] if lines else 'a process failed'}: "
                             f"{lines[-1] if lines else ''}") from None
    except mp.ProcessExitedException as exc:
        raise MapoBenchError(f"toy pretrain: a worker process exited ({exc}); rerun to resume "
                             "from the last checkpoint") from None
