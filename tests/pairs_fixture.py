"""Tiny pair datasets in the Pick-a-Pic layout for trainer and reader tests (until the builder exists).

``write_pairs`` writes FOLDER/data/train-00000.parquet with caption, jpg_0, jpg_1 (PNG bytes),
label_0, label_1 (float64). Images are seeded colour gradients, so every row differs.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

CAPTIONS = ["a red circle", "a blue square on the left", "a green triangle", "a small yellow star",
            "a purple heart on the right", "an orange ring"]


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.integers(0, 256, size=3)
    ramp = np.linspace(0, 1, width)[None, :, None] * rng.integers(-120, 120, size=3)
    noise = rng.normal(0, 12, size=(height, width, 3))
    return np.clip(base + ramp + noise, 0, 255)


def write_pairs(folder: str | Path, n: int = 8, *, size: tuple[int, int] = (40, 48), size_1: tuple[int, int] | None = None,
                ties: tuple[int, ...] = (), seed: int = 0, bad: dict[int, str] | None = None,
                drop_columns: tuple[str, ...] = (), int_labels: bool = False, shards: int = 1) -> Path:
    """Write ``n`` pairs; rows in ``ties`` get 0.5/0.5; others alternate which image wins.

    ``size`` = (height, width) of jpg_0, ``size_1`` of jpg_1 (default: the same). ``bad`` maps a row to
    the column whose bytes are replaced by garbage.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    h1, w1 = size_1 or size
    rows = []
    for i in range(n):
        first = i % 2 == 0
        label_0, label_1 = (0.5, 0.5) if i in ties else ((1.0, 0.0) if first else (0.0, 1.0))
        row = {"caption": CAPTIONS[i % len(CAPTIONS)] + f" {i}", "jpg_0": png_bytes(image(rng, *size)),
               "jpg_1": png_bytes(image(rng, h1, w1)), "label_0": label_0, "label_1": label_1}
        if bad and i in bad:
            row[bad[i]] = b"not an image"
        rows.append(row)
    frame = pd.DataFrame(rows).drop(columns=list(drop_columns))
    if int_labels:
        for col in ("label_0", "label_1"):
            if col in frame:
                frame[col] = frame[col].round().astype("int64")
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for k in range(shards):
        frame.iloc[bounds[k]:bounds[k + 1]].to_parquet(folder / "data" / f"train-{k:05d}.parquet", index=False)
    return folder
