"""CPU thread policy: one torch thread per process unless MAPO_BENCH_THREADS says otherwise.

On 2-core machines two torch threads per process under load ran 20-40x slower than one
(TOY_NOTES.md), so the default is one.
"""

from __future__ import annotations

import contextlib
import os

ENV_VAR = "MAPO_BENCH_THREADS"


def thread_count() -> int:
    """Threads per process: $MAPO_BENCH_THREADS (>= 1) or 1."""
    raw = os.environ.get(ENV_VAR, "1").strip() or "1"
    try:
        count = int(raw)
    except ValueError:
        from mapo_bench.errors import MapoBenchError

        raise MapoBenchError(f"{ENV_VAR}={raw!r} is not an integer; set it to a thread count such as 1") from None
    return max(1, count)


def configure_threads() -> int:
    """Apply the thread policy to torch (and BLAS via env vars for child processes); returns the count."""
    count = thread_count()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(count))
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(count)
    except RuntimeError:  # already set once in this process
        pass
    return count


def on_cpu(device: str | None) -> bool:
    """Whether a stage runs on the CPU (``device`` None: no CUDA here). accelerate needs ``cpu=True``
    to join CPU processes (torchrun / accelerate launch) into one group."""
    if device is not None:
        return str(device).startswith("cpu")
    import torch

    return not torch.cuda.is_available()


@contextlib.contextmanager
def flush_denormals():
    """Treat float32 denormals (|x| < 1.2e-38) as zero on the CPU while the block runs.

    A saturated Diffusion-DPO loss (large beta) has sigmoid gradients like exp(-90); on x86 CPUs every
    denormal operand costs a microcode assist, and the toy DPO steps ran 3-10x slower than MaPO's once the
    loss saturated (toy-quick, step time 0.23 s -> 1-3 s). Flushing changes only values below 1.2e-38,
    whose effect after Adam's eps (1e-8) is far below float32 resolution. No effect on a GPU.
    """
    import torch

    enabled = torch.set_flush_denormal(True)
    try:
        yield enabled
    finally:
        if enabled:
            torch.set_flush_denormal(False)
