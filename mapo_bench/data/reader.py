"""Read preference pairs in the Pick-a-Pic layout: open, select (ties, label noise), decode, transform.

Accepts a folder with ``data/*.parquet`` (our builder's output), a folder or a single parquet file, or a
Hub dataset id. Small columns (caption, labels) are read eagerly; image bytes are read per file on
first use. A pair's orientation is a probability ``p0`` that jpg_0 is the chosen image (1, 0, or 0.5
for a tie kept with policy ``half``); the training loop draws the orientation from its generator.
Image transforms follow the official MaPO/SDXL recipe (REFERENCE.md section 3): jpg_1 is resized to
jpg_0's size, both are resized (bilinear, shorter side = resolution) and cropped identically, and one
horizontal flip is shared by the pair; SDXL's time_ids come from jpg_0's original size and the crop.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mapo_bench.data.schema import DATA_SUBDIR, IMAGE_COLUMNS, LABEL_COLUMNS, PICKAPIC_COLUMNS
from mapo_bench.errors import MapoBenchError
from mapo_bench.registry import TIE_POLICIES

CACHED_ROW_GROUPS = 8  # parquet row groups of images kept in memory (the builder writes 64 rows a group)


# -- opening -------------------------------------------------------------------------------------
class PairSource:
    """The raw rows of a pair dataset: captions and labels in memory, image bytes on demand."""

    def __init__(self, name: str, captions: list[str], labels: np.ndarray, fingerprint: str) -> None:
        self.name = name
        self.captions = captions
        self.labels = labels  # (N, 2) float64
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.captions)

    def image_bytes(self, row: int, column: str) -> Any:
        raise NotImplementedError  # pragma: no cover - subclasses


class ParquetSource(PairSource):
    """Local parquet shards; each shard's image columns are loaded on first access and kept."""

    def __init__(self, name: str, files: list[Path]) -> None:
        import pyarrow.parquet as pq

        captions: list[str] = []
        labels: list[np.ndarray] = []
        self.files = files
        self.offsets: list[int] = []
        digest = hashlib.sha256()
        pair_ids: dict[Any, int] = {}
        for path in files:
            schema_names = pq.read_schema(path).names
            missing = [c for c in PICKAPIC_COLUMNS if c not in schema_names]
            if missing:
                raise MapoBenchError(
                    f"{path}: missing column {missing[0]!r} (the Pick-a-Pic layout needs {', '.join(PICKAPIC_COLUMNS)})")
            table = pq.read_table(path, columns=["caption", *LABEL_COLUMNS, *(["pair_id"] if "pair_id" in schema_names else [])])
            if "pair_id" in schema_names:
                _unique_pair_ids(table.column("pair_id").to_pylist(), path, len(captions), pair_ids)
            self.offsets.append(len(captions))
            captions.extend(_captions(table.column("caption").to_pylist(), path, len(captions)))
            labels.append(_labels(table, path, len(captions) - table.num_rows))
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:".encode())
            digest.update(_file_digest(path).encode())
        self._group_starts: dict[int, np.ndarray] = {}
        self._groups: OrderedDict[tuple[int, int], Any] = OrderedDict()
        super().__init__(name, captions, np.concatenate(labels) if labels else np.zeros((0, 2)),
                         digest.hexdigest()[:16])

    def _locate(self, row: int) -> tuple[int, int]:
        index = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return index, row - self.offsets[index]

    def image_bytes(self, row: int, column: str) -> Any:
        """One encoded image. Image columns are read a parquet row group at a time and only the last
        ``CACHED_ROW_GROUPS`` groups are kept, so memory stays bounded whatever the dataset size."""
        import pyarrow.parquet as pq

        index, local = self._locate(row)
        if index not in self._group_starts:
            meta = pq.ParquetFile(self.files[index]).metadata
            sizes = [meta.row_group(k).num_rows for k in range(meta.num_row_groups)]
            self._group_starts[index] = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        starts = self._group_starts[index]
        group = int(np.searchsorted(starts, local, side="right")) - 1
        key = (index, group)
        if key in self._groups:
            self._groups.move_to_end(key)
        else:
            self._groups[key] = pq.ParquetFile(self.files[index]).read_row_group(group, columns=list(IMAGE_COLUMNS))
            if len(self._groups) > CACHED_ROW_GROUPS:
                self._groups.popitem(last=False)
        return self._groups[key].column(column)[local - int(starts[group])].as_py()


class HubSource(PairSource):
    """A Hub dataset through ``datasets`` (Arrow, memory-mapped random access)."""

    def __init__(self, name: str, split: str) -> None:
        import datasets

        try:
            ds = datasets.load_dataset(name, split=split)
        except Exception as exc:  # noqa: BLE001 - datasets raises many types; one line for the user
            raise MapoBenchError(f"dataset {name!r} (split {split!r}): cannot load ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}); pass a local folder or check the id") from None
        missing = [c for c in PICKAPIC_COLUMNS if c not in ds.column_names]
        if missing:
            raise MapoBenchError(
                f"dataset {name!r}: missing column {missing[0]!r} (the Pick-a-Pic layout needs {', '.join(PICKAPIC_COLUMNS)})")
        self.ds = ds.cast_column("jpg_0", datasets.Value("binary")) if _is_image_feature(ds, "jpg_0") else ds
        if _is_image_feature(self.ds, "jpg_1"):
            self.ds = self.ds.cast_column("jpg_1", datasets.Value("binary"))
        table = self.ds.select_columns(["caption", *LABEL_COLUMNS]).data.table
        captions = _captions(table.column("caption").to_pylist(), name, 0)
        if "pair_id" in ds.column_names:
            _unique_pair_ids(self.ds["pair_id"], name, 0, {})
        super().__init__(name, captions, _labels(table, name, 0), str(getattr(ds, "_fingerprint", name)))

    def image_bytes(self, row: int, column: str) -> Any:
        return self.ds[int(row)][column]


def _is_image_feature(ds: Any, column: str) -> bool:
    return type(ds.features.get(column)).__name__ == "Image"


def _file_digest(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _captions(values: list[Any], where: Any, start: int) -> list[str]:
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise MapoBenchError(f"{where}: row {start + i} column 'caption' is {value!r}, not a string; fix or drop the row")
        if not value.strip():
            raise MapoBenchError(f"{where}: row {start + i} column 'caption' is blank ({value!r}); fix or drop the row")
    return values


def _unique_pair_ids(values: list[Any], where: Any, start: int, seen: dict[Any, int]) -> None:
    """A ``pair_id`` column (optional) names each pair once: a repeat is a copied row or a merge gone wrong."""
    for i, value in enumerate(values):
        if value is None:
            continue
        if value in seen:
            raise MapoBenchError(f"{where}: row {start + i} column 'pair_id' is {value!r}, which row {seen[value]} "
                                 "already has; drop the duplicate")
        seen[value] = start + i


def _labels(table: Any, where: Any, start: int) -> np.ndarray:
    cols = []
    for name in LABEL_COLUMNS:
        values = table.column(name).to_pylist()
        for i, value in enumerate(values):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value or value < 0:
                raise MapoBenchError(f"{where}: row {start + i} column {name!r} is {value!r}; labels are numbers >= 0 "
                                     "(1 = preferred, 0 = not, 0.5/0.5 = tie)")
        cols.append(np.asarray(values, dtype=np.float64))
    labels = np.stack(cols, axis=1) if cols[0].size else np.zeros((0, 2))
    both_zero = np.flatnonzero((labels[:, 0] == 0) & (labels[:, 1] == 0))
    if both_zero.size:
        raise MapoBenchError(f"{where}: row {start + int(both_zero[0])} has label_0 = label_1 = 0 (no preference); "
                             "fix the labels or drop the row")
    return labels


def open_pairs(dataset: str | Path, split: str = "train") -> PairSource:
    """Open ``dataset``: a folder (``data/*.parquet`` or ``*.parquet``), a parquet file, or a Hub id."""
    path = Path(dataset)
    if path.is_file():
        return ParquetSource(str(path), [path])
    if path.is_dir():
        files = sorted((path / DATA_SUBDIR).glob(f"{split}-*.parquet")) or sorted((path / DATA_SUBDIR).glob("*.parquet"))
        files = files or sorted(path.glob("*.parquet"))
        if not files:
            raise MapoBenchError(f"{path}: no parquet files (expected {path}/{DATA_SUBDIR}/{split}-00000.parquet ...)")
        return ParquetSource(str(path), files)
    if str(dataset).count("/") == 1 and not str(dataset).startswith((".", "/")):
        return HubSource(str(dataset), split)
    raise MapoBenchError(f"dataset {str(dataset)!r}: no such folder or file, and not a Hub id (owner/name)")


# -- decoding ------------------------------------------------------------------------------------
def decode_image(value: Any, row: int, column: str, where: str) -> Any:
    """Encoded bytes (or a datasets image dict / PIL image) -> an RGB PIL image; errors name row and column."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        value = value.get("bytes")
    if not isinstance(value, (bytes, bytearray)) or not value:
        raise MapoBenchError(f"{where}: row {row} column {column!r} holds no image bytes; fix the row or pass "
                             "data.skip_bad_rows=true")
    from mapo_bench.data.imagefolder import decode_upright_rgb

    try:
        return decode_upright_rgb(io.BytesIO(value))[0]
    except Exception as exc:  # noqa: BLE001 - PIL raises several types for corrupt data
        raise MapoBenchError(f"{where}: row {row} column {column!r}: cannot decode image ({type(exc).__name__}); "
                             "fix the row or pass data.skip_bad_rows=true") from None


def find_bad_rows(source: PairSource, rows: list[int] | None = None, progress: bool = False) -> dict[int, str]:
    """Rows whose images do not decode, with the error message (a full decode of every image)."""
    bad: dict[int, str] = {}
    rows = list(range(len(source))) if rows is None else rows
    for row in _track(rows, "checking images", progress):
        for column in IMAGE_COLUMNS:
            try:
                decode_image(source.image_bytes(row, column), row, column, source.name)
            except MapoBenchError as exc:
                bad[row] = str(exc)
                break
    return bad


def _track(items: list[int], description: str, enabled: bool):
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=description, transient=True)


# -- selection -----------------------------------------------------------------------------------
@dataclass
class PairSelection:
    """The pairs a run trains on: raw row and p0 = probability that jpg_0 is the chosen image."""

    rows: np.ndarray
    p0: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rows.size)


def select_pairs(source: PairSource, tie_policy: str = "drop", label_noise: float = 0.0,
                 max_samples: int | None = None, seed: int = 0, bad_rows: dict[int, str] | None = None) -> PairSelection:
    """Apply the tie policy, then label noise, then ``max_samples`` (first rows in dataset order).

    drop: ties removed. half: p0 = 0.5 (the orientation is redrawn each time the pair is used, so the
    expected label is 0.5). random: each tie gets one orientation from ``seed``. Label noise swaps the
    preference of a seeded random fraction of pairs, fixed for the run (a noisy dataset, not noisy steps).
    """
    if tie_policy not in TIE_POLICIES:
        raise MapoBenchError(f"tie policy {tie_policy!r} is not one of drop, half, random")
    labels = source.labels
    rows = np.arange(len(source))
    counts = {"rows": int(len(source))}
    if bad_rows:
        keep = ~np.isin(rows, np.fromiter(bad_rows, dtype=np.int64))
        rows, labels = rows[keep], labels[keep]
        counts["bad_rows_skipped"] = len(bad_rows)
    tie = labels[:, 0] == labels[:, 1]
    p0 = (labels[:, 0] > labels[:, 1]).astype(np.float64)
    rng = np.random.default_rng([seed, 0x7A1E])
    counts["ties"] = int(tie.sum())
    if tie_policy == "drop":
        rows, p0 = rows[~tie], p0[~tie]
    elif tie_policy == "half":
        p0[tie] = 0.5
    else:
        p0[tie] = (rng.random(int(tie.sum())) < 0.5).astype(np.float64)
    if label_noise > 0:
        noisy = np.random.default_rng([seed, 0x401_5E]).random(rows.size) < label_noise
        p0[noisy] = 1.0 - p0[noisy]
        counts["labels_flipped"] = int(noisy.sum())
    if max_samples is not None:
        rows, p0 = rows[:max_samples], p0[:max_samples]
    counts["pairs"] = int(rows.size)
    if not rows.size:
        raise MapoBenchError(f"{source.name}: no pairs left after tie policy {tie_policy!r} "
                             f"({counts['ties']} of {counts['rows']} rows are ties); try data.tie_policy=half")
    return PairSelection(rows, p0, counts)


# -- transforms ----------------------------------------------------------------------------------
@dataclass
class PairPixels:
    """Both images of a pair as (3, R, R) tensors in [-1, 1], plus SDXL micro-conditioning info."""

    pixels: tuple[Any, Any]  # jpg_0, jpg_1
    original_size: tuple[int, int]  # jpg_0's (height, width)
    crop_top_left: tuple[int, int]


def crop_box(height: int, width: int, resolution: int, crop: str, u: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int]:
    """(top, left) of the crop after resizing the shorter side to ``resolution``; random crop uses ``u`` in [0, 1)."""
    if crop == "center":
        return int(round((height - resolution) / 2.0)), int(round((width - resolution) / 2.0))
    return int(u[0] * (height - resolution + 1)), int(u[1] * (width - resolution + 1))


def resized_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """Size after a bilinear resize of the shorter side to ``resolution`` (torchvision's rounding)."""
    if height <= width:
        return resolution, int(resolution * width / height)
    return int(resolution * height / width), resolution


def load_pair(source: PairSource, row: int, resolution: int, crop: str = "center", flip: bool = False,
              crop_u: tuple[float, float] = (0.5, 0.5)) -> PairPixels:
    """Decode and transform both images of ``row`` identically (same resize, crop and flip)."""
    import torch
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    img0 = decode_image(source.image_bytes(row, "jpg_0"), row, "jpg_0", source.name)
    img1 = decode_image(source.image_bytes(row, "jpg_1"), row, "jpg_1", source.name)
    if img1.size != img0.size:
        img1 = img1.resize(img0.size, resample=_bilinear())
    width, height = img0.size
    new_h, new_w = resized_size(height, width, resolution)
    top, left = crop_box(new_h, new_w, resolution, crop, crop_u)
    out = []
    for image in (img0, img1):
        tensor = TF.pil_to_tensor(image)
        tensor = TF.resize(tensor, [new_h, new_w], interpolation=InterpolationMode.BILINEAR, antialias=True)
        tensor = tensor[:, top:top + resolution, left:left + resolution]
        if flip:
            tensor = torch.flip(tensor, dims=[2])
        out.append(tensor.float().div(127.5).sub(1.0))
    return PairPixels((out[0], out[1]), (height, width), (top, left))


def _bilinear():
    from PIL import Image

    return Image.Resampling.BILINEAR
