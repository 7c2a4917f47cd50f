"""The pair-dataset layout: Pick-a-Pic v2 columns plus mapo-bench provenance (DESIGN.md section 7)."""

from __future__ import annotations

# Read by the official MaPO and Diffusion-DPO trainers.
PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
# Written by mapo-bench's builder: full generating prompts, the pair's seed, and how it was made.
PROVENANCE_COLUMNS = ("prompt_0", "prompt_1", "seed", "model_id", "task", "pair_id", "sampler")
ALL_COLUMNS = PICKAPIC_COLUMNS + PROVENANCE_COLUMNS
IMAGE_COLUMNS = ("jpg_0", "jpg_1")
LABEL_COLUMNS = ("label_0", "label_1")

DATA_SUBDIR = "data"
PARTIAL_SUBDIR = ".partial"


def shard_name(index: int) -> str:
    """``train-00003.parquet``: the k-th shard of the train split."""
    return f"train-{index:05d}.parquet"

# Column types as written by the builder (labels float64; readers also accept int labels).
COLUMN_TYPES = {
    "caption": "string", "jpg_0": "binary", "jpg_1": "binary", "label_0": "float64", "label_1": "float64",
    "prompt_0": "string", "prompt_1": "string", "seed": "int64", "model_id": "string", "task": "string",
    "pair_id": "int64", "sampler": "string",
}


def arrow_schema():
    """The pyarrow schema of a built shard (imported lazily: pyarrow is only needed by data stages)."""
    import pyarrow as pa

    types = {"string": pa.string(), "binary": pa.binary(), "float64": pa.float64(), "int64": pa.int64()}
    return pa.schema([(name, types[COLUMN_TYPES[name]]) for name in ALL_COLUMNS])


def hf_features() -> list[dict[str, str]]:
    """``dataset_info.features`` for the card's YAML front matter (Hugging Face datasets dtypes)."""
    return [{"name": name, "dtype": COLUMN_TYPES[name]} for name in ALL_COLUMNS]
