"""Model families. A backend is the only place that knows one (SDXL, SD1.5, SD3, FLUX, toy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mapo_bench.backends.base import Backend


def load_backend(name: str, model: str | None = None, **options) -> Backend:
    """Load backend ``name`` (registry name) with ``model`` (hub id or local path; None = its default)."""
    from mapo_bench.registry import BACKENDS

    cls = BACKENDS.get(name)
    return cls.load(model or cls.default_model, **options)
