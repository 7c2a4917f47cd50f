"""validate-dataset: schema errors, undecodable images, label problems, ties and duplicates, with row numbers.

Rows are numbered from 0 across all shards in name order (the order ``load_dataset`` reads them), and
each message also names the shard and the row inside it. Works on any Pick-a-Pic style parquet folder
or file, not only on mapo-bench builds; a build's manifest and card counts are checked too.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from mapo_bench.data.schema import (
    DATA_SUBDIR,
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    PICKAPIC_COLUMNS,
    PROVENANCE_COLUMNS,
)
from mapo_bench.errors import MapoBenchError

MAX_MESSAGES = 200


def find_shards(path: Path) -> list[Path]:
    """The parquet files of a dataset folder (``data/`` first, else anywhere below) or a single file."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MapoBenchError(f"{path}: no such dataset folder or parquet file")
    shards = sorted((path / DATA_SUBDIR).glob("*.parquet")) or sorted(
        p for p in path.rglob("*.parquet") if not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not shards:
        raise MapoBenchError(f"{path}: no parquet files found (expected {DATA_SUBDIR}/train-*.parquet)")
    return shards


class Report:
    """Accumulates findings; messages past MAX_MESSAGES are counted, not listed."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.error_count = 0
        self.warning_count = 0

    def error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_MESSAGES:
            self.errors.append(message)

    def warn(self, message: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < MAX_MESSAGES:
            self.warnings.append(message)


def _where(row: int, shard: Path, local: int, root: Path) -> str:
    name = shard.relative_to(root).as_posix() if shard != root and root.is_dir() else shard.name
    return f"row {row} ({name} row {local})"


def _decode(data: Any) -> tuple[Any, str | None, tuple[str, ...]]:
    """(size, None, conversions) for a decodable image, (None, reason, ()) otherwise.

    Decodes fully, as the trainer does (the same size limit, EXIF orientation and RGB conversion), so a
    file that passes here also loads there; the conversions it needed are counted in the report.
    """
    from mapo_bench.data.imagefolder import decode_upright_rgb

    if data is None:
        return None, "missing (null)", ()
    if not isinstance(data, bytes | bytearray):
        return None, f"not bytes ({type(data).__name__})", ()
    if not data:
        return None, "empty (zero bytes)", ()
    try:
        _, size, converted = decode_upright_rgb(io.BytesIO(data))
        return size, None, converted
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
        return None, f"cannot decode image ({type(exc).__name__}: {str(exc)[:80]})", ()


def _label(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def validate_dataset(path: str | Path) -> dict[str, Any]:
    """Check a dataset folder (or one parquet file); returns counts, errors, warnings, ties, duplicates."""
    import pyarrow.parquet as pq

    root = Path(path)
    shards = find_shards(root)
    report = Report()
    rows = 0
    ties: list[int] = []
    duplicates: list[dict[str, int]] = []
    seen_pairs: dict[tuple[str, str, str], int] = {}
    seen_ids: dict[int, int] = {}
    sizes: dict[tuple[int, int], int] = {}
    conversions: Counter[str] = Counter()  # images the trainer converts on decode (to RGB, EXIF upright)
    columns_seen: list[str] = []
    for shard in shards:
        try:
            table = pq.ParquetFile(shard)
            schema = table.schema_arrow
        except Exception as exc:  # noqa: BLE001
            report.error(f"{shard}: not a readable parquet file ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        names = schema.names
        columns_seen = columns_seen or names
        missing = [c for c in PICKAPIC_COLUMNS if c not in names]
        for column in missing:
            report.error(f"{shard.name}: column {column!r} is missing (Pick-a-Pic layout needs {', '.join(PICKAPIC_COLUMNS)})")
        absent = [c for c in PROVENANCE_COLUMNS if c not in names]
        if absent:
            report.warn(f"{shard.name}: no provenance column(s) {', '.join(absent)} (not a mapo-bench build?)")
        _check_types(schema, shard, report)
        local = 0
        for batch in table.iter_batches(batch_size=32):  # bounded memory for GB-sized shards
            for record in batch.to_pylist():
                row = rows + local
                where = _where(row, shard, local, root)
                _check_row(record, where, row, report, ties, sizes, conversions)
                _check_duplicates(record, where, row, report, duplicates, seen_pairs, seen_ids)
                local += 1
        rows += local
    if len(sizes) > 1:
        report.warn(f"images have {len(sizes)} different sizes: " +
                    ", ".join(f"{w}x{h} ({n})" for (w, h), n in sorted(sizes.items(), key=lambda kv: -kv[1])[:5]))
    if root.is_dir():
        _check_counts(root, rows, report)
    if rows and len(ties) == rows:
        if _manifest_task(root) == "class-images":
            report.warn(f"all {rows} rows are ties: class images (DreamBooth's prior data, dreambooth.class_data), "
                        "not preference pairs")
        else:
            report.error(f"all {rows} rows are ties (label_0 == label_1): no preference to learn; a preference "
                         "method drops ties by default and would have no pairs (data.tie_policy=half keeps them)")
    return {
        "path": str(root), "shards": len(shards), "rows": rows, "columns": columns_seen,
        "errors": report.errors, "error_count": report.error_count,
        "warnings": report.warnings, "warning_count": report.warning_count,
        "ties": len(ties), "tie_rows": ties[:MAX_MESSAGES],
        "duplicates": len(duplicates), "duplicate_rows": duplicates[:MAX_MESSAGES],
        "image_sizes": {f"{w}x{h}": n for (w, h), n in sizes.items()},
        "converted_on_decode": dict(sorted(conversions.items())),
    }


def _manifest_task(root: Path) -> str | None:
    """The build task recorded in the folder's manifest.json (None: no readable manifest)."""
    from mapo_bench.io import MANIFEST, read_json

    if not (root / MANIFEST).is_file():
        return None
    try:
        return read_json(root / MANIFEST).get("config", {}).get("task")
    except MapoBenchError:
        return None


def _check_types(schema: Any, shard: Path, report: Report) -> None:
    import pyarrow as pa

    expect = {"caption": (pa.types.is_string, pa.types.is_large_string),
              "jpg_0": (pa.types.is_binary, pa.types.is_large_binary),
              "jpg_1": (pa.types.is_binary, pa.types.is_large_binary),
              "label_0": (pa.types.is_floating, pa.types.is_integer),
              "label_1": (pa.types.is_floating, pa.types.is_integer)}
    for column, checks in expect.items():
        if column in schema.names and not any(check(schema.field(column).type) for check in checks):
            report.error(f"{shard.name}: column {column!r} has type {schema.field(column).type}, "
                         f"expected {'binary' if column.startswith('jpg') else 'string' if column == 'caption' else 'float or int'}")


def _check_row(record: dict[str, Any], where: str, row: int, report: Report, ties: list[int],
               sizes: dict[tuple[int, int], int], conversions: Counter[str]) -> None:
    caption = record.get("caption", "")
    if "caption" in record and (not isinstance(caption, str) or not caption.strip()):
        report.error(f"{where}, column caption: empty or missing caption")
    decoded = {}
    for column in IMAGE_COLUMNS:
        if column not in record:
            continue
        size, problem, converted = _decode(record[column])
        conversions.update(converted)
        if problem:
            report.error(f"{where}, column {column}: {problem}")
        else:
            decoded[column] = size
            sizes[size] = sizes.get(size, 0) + 1
    if len(decoded) == 2 and decoded["jpg_0"] != decoded["jpg_1"]:
        report.warn(f"{where}: jpg_0 is {decoded['jpg_0'][0]}x{decoded['jpg_0'][1]} but jpg_1 is "
                    f"{decoded['jpg_1'][0]}x{decoded['jpg_1'][1]}")
    if all(c in record for c in IMAGE_COLUMNS) and record["jpg_0"] is not None and record["jpg_0"] == record["jpg_1"]:
        report.warn(f"{where}: jpg_0 and jpg_1 are the same bytes (the pair carries no preference)")
    if not all(c in record for c in LABEL_COLUMNS):
        return
    labels = [_label(record[c]) for c in LABEL_COLUMNS]
    for column, value, raw in zip(LABEL_COLUMNS, labels, (record[c] for c in LABEL_COLUMNS), strict=True):
        if value is None:
            report.error(f"{where}, column {column}: label is missing or not a number ({raw!r})")
        elif not 0.0 <= value <= 1.0:
            report.error(f"{where}, column {column}: label {value:g} is outside [0, 1]")
    if None in labels:
        return
    if abs(labels[0] + labels[1] - 1.0) > 1e-6:
        report.error(f"{where}, columns label_0/label_1: labels {labels[0]:g}/{labels[1]:g} do not sum to 1")
    elif labels[0] == labels[1]:
        ties.append(row)
        report.warn(f"{where}: tie (labels 0.5/0.5); trainers drop it by default (tie_policy=drop)")


def _check_duplicates(record: dict[str, Any], where: str, row: int, report: Report, duplicates: list[dict[str, int]],
                      seen_pairs: dict[tuple[str, str, str], int], seen_ids: dict[int, int]) -> None:
    def digest(value: Any) -> str:
        return hashlib.sha1(value).hexdigest() if isinstance(value, bytes | bytearray) else repr(value)

    key = (str(record.get("caption")), digest(record.get("jpg_0")), digest(record.get("jpg_1")))
    if key in seen_pairs:
        duplicates.append({"row": row, "same_as": seen_pairs[key]})
        report.warn(f"{where}: duplicate of row {seen_pairs[key]} (same caption and images)")
    else:
        seen_pairs[key] = row
    pair_id = record.get("pair_id")
    if isinstance(pair_id, int):
        if pair_id in seen_ids:
            report.error(f"{where}, column pair_id: pair_id {pair_id} repeats row {seen_ids[pair_id]}")
        else:
            seen_ids[pair_id] = row


def _check_counts(root: Path, rows: int, report: Report) -> None:
    """A build folder's manifest and card must state the real row count (the card's is checked by load_dataset)."""
    import json

    manifest = root / "manifest.json"
    if manifest.is_file():
        try:
            pairs = json.loads(manifest.read_text()).get("counts", {}).get("pairs")
        except (json.JSONDecodeError, OSError):
            report.error(f"{manifest}: not valid JSON")
        else:
            if pairs is not None and pairs != rows:
                report.error(f"{manifest}: counts.pairs is {pairs} but the shards hold {rows} rows")
    card = root / "README.md"
    if card.is_file():
        match = re.search(r"num_examples:\s*(\d+)", card.read_text(encoding="utf-8", errors="replace"))
        if match and int(match.group(1)) != rows:
            report.error(f"{card}: num_examples is {match.group(1)} but the shards hold {rows} rows "
                         "(datasets.load_dataset will refuse the folder)")
    if (root / ".partial").exists():
        report.warn(f"{root / '.partial'}: an unfinished build is in progress or was interrupted")
