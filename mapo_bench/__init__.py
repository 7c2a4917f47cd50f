"""mapo-bench: preference alignment of text-to-image diffusion models.

Importing this package is cheap: torch and the model libraries are imported by the modules that
need them, never here, so ``mapo-bench --help`` answers fast.
"""

__version__ = "0.1.0"

from mapo_bench.errors import MapoBenchError  # noqa: E402

__all__ = ["MapoBenchError", "__version__"]
