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


def backend_hint(pipeline_class: str | None) -> str:
    """What to tell a user whose model folder holds ``pipeline_class`` (model_index.json's _class_name)."""
    from mapo_bench.registry import BACKENDS

    owner = next((n for n in BACKENDS.names()
                  if pipeline_class and getattr(BACKENDS.get(n), "pipeline_class_name", None) == pipeline_class), None)
    return f"pass --backend {owner}" if owner else "no mapo-bench backend loads it"
