"""Torch dtype names and the ``from_pretrained`` dtype keyword: shared by backends, the toy world and the
evaluators, so none of them imports another's layer (DESIGN 2)."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bf16"`` / ``"bfloat16"`` / a torch dtype -> the torch dtype; an unknown name is a one-line error."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        from mapo_bench.errors import MapoBenchError

        raise MapoBenchError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained`` dtype keyword: diffusers >= 0.42 names it ``dtype`` (``torch_dtype`` is deprecated)."""
    from importlib.metadata import version

    from packaging.version import Version

    return {"dtype": dtype} if Version(version("diffusers")) >= Version("0.42") else {"torch_dtype": dtype}
