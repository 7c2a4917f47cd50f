"""The pair-dataset layout: Pick-a-Pic v2 columns plus mapo-bench provenance (DESIGN.md section 7)."""

from __future__ import annotations

# Read by the official MaPO and Diffusion-DPO trainers.
PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
# Written by mapo-bench's builder: full generating prompts, the pair's seed, and how it was made.
PROVENANCE_COLUMNS = ("prompt_0", "prompt_1", "seed", "model_id", "task", "pair_id", "sampler")
ALL_COLUMNS = PICKAPIC_COLUMNS + PROVENANCE_COLUMNS

DATA_SUBDIR = "data"
PARTIAL_SUBDIR = ".partial"


def shard_name(index: int) -> str:
    """``train-00003.parquet``: the k-th shard of the train split."""
    return f"train-{index:05d}.parquet"
