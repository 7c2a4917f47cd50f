"""Prompt sources: built-in sets, the toy captions, text/csv/jsonl/parquet files and Hugging Face datasets.

Every source goes through one path: read -> normalise whitespace -> drop empty -> dedupe (first occurrence
wins). A prompt's id is its index in that deduped list, so ids stay stable however many prompts are
sampled; sampling takes the first ``num_prompts`` ids of a seeded permutation and returns them in id
order, so a larger sample contains every smaller one with the same seed.

Source strings:

- ``builtin:train`` | ``builtin:validation`` | ``builtin:test``: prompts written for this project
  (``mapo_bench/data/prompt_sets/*.txt``; disjoint parts)
- ``toy:train`` | ``toy:validation`` | ``toy:test``: toy captions (split by held-out attribute combinations)
- ``prompts.txt``: one prompt per line
- ``table.csv`` / ``table.jsonl`` / ``table.parquet``, optionally ``table.csv:COLUMN`` (default column
  ``caption``, else ``prompt``)
- ``hf://NAME:SPLIT:COLUMN``: ``datasets.load_dataset(NAME, split=SPLIT)[COLUMN]``
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mapo_bench.errors import MapoBenchError

SPLITS = ("train", "validation", "test")
TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")
TEXT_SUFFIXES = (".txt",)
DEFAULT_COLUMNS = ("caption", "prompt")
SOURCE_HELP = ("builtin:train|validation|test, toy:train|validation|test, FILE.txt, "
               "FILE.csv|jsonl|parquet[:COLUMN], hf://NAME:SPLIT:COLUMN")


def load_prompts(source: str, num_prompts: int | None = None, seed: int = 0) -> list[str]:
    """The prompts of ``source`` (deduped, non-empty), ``num_prompts`` of them sampled by ``seed``."""
    return [prompt for _, prompt in load_prompt_records(source, num_prompts, seed)]


def load_prompt_records(source: str, num_prompts: int | None = None, seed: int = 0) -> list[tuple[int, str]]:
    """``[(prompt_id, prompt), ...]`` in id order; ``prompt_id`` = index in the deduped source."""
    records = list(enumerate(dedupe(read_source(source))))
    if not records:
        raise MapoBenchError(f"prompt source {source!r} holds no non-empty prompts")
    return sample_records(records, num_prompts, seed, source)


def sample_records(records: list[tuple[int, str]], num_prompts: int | None, seed: int,
                   source: str = "<prompts>") -> list[tuple[int, str]]:
    """The first ``num_prompts`` records of a permutation seeded by ``seed``, back in id order."""
    if num_prompts is None or num_prompts == len(records):
        return list(records)
    if num_prompts < 1:
        raise MapoBenchError(f"num_prompts must be >= 1, got {num_prompts}")
    if num_prompts > len(records):
        raise MapoBenchError(
            f"prompt source {source!r} has {len(records)} distinct prompts, fewer than num_prompts="
            f"{num_prompts}; lower num_prompts or raise pairs_per_prompt")
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(records))[:num_prompts]
    return [records[i] for i in sorted(int(i) for i in order)]


def normalise(prompt: object) -> str:
    """Collapse whitespace runs (newlines, tabs) to one space; non-strings (NaN, None) become ''."""
    return " ".join(prompt.split()) if isinstance(prompt, str) else ""


def dedupe(prompts: list[object]) -> list[str]:
    """Normalised, non-empty prompts, each once, in first-seen order."""
    seen: dict[str, None] = {}
    for prompt in prompts:
        text = normalise(prompt)
        if text:
            seen.setdefault(text, None)
    return list(seen)


def read_source(source: str) -> list[object]:
    """The raw prompt values of ``source`` (before dedupe). Unknown sources are one-line errors."""
    source = str(source).strip()
    if source.startswith("hf://"):
        return _read_hf(source)
    scheme, sep, split = source.partition(":")
    if sep and scheme in ("builtin", "toy"):
        if split not in SPLITS:
            raise MapoBenchError(f"prompt source {source!r}: unknown split {split!r}; valid: "
                                 f"{', '.join(f'{scheme}:{s}' for s in SPLITS)}")
        return builtin_prompts(split) if scheme == "builtin" else _toy_prompts(split)
    return _read_file(source)


def builtin_prompts(split: str) -> list[str]:
    """The raw lines of the built-in prompt set ``split`` (shipped as package data)."""
    text = resources.files("mapo_bench.data").joinpath("prompt_sets", f"{split}.txt").read_text(encoding="utf-8")
    return text.splitlines()


def _toy_prompts(split: str) -> list[str]:
    from mapo_bench.toy.vocab import toy_prompts

    return toy_prompts(split)


def _split_column(source: str) -> tuple[Path, str | None]:
    """``path.csv:col`` -> (path.csv, 'col'); an existing path wins over a colon inside its name."""
    path = Path(source).expanduser()
    if path.exists():
        return path, None
    head, sep, column = source.rpartition(":")
    if sep and head and Path(head).expanduser().suffix.lower() in TABLE_SUFFIXES + TEXT_SUFFIXES:
        return Path(head).expanduser(), column or None
    return path, None


def _read_file(source: str) -> list[object]:
    path, column = _split_column(source)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES + TEXT_SUFFIXES:
        raise MapoBenchError(f"prompt source {source!r} is not a known source; valid: {SOURCE_HELP}")
    if not path.is_file():
        raise MapoBenchError(f"prompt source {source!r}: file {path} not found; valid sources: {SOURCE_HELP}")
    if suffix in TEXT_SUFFIXES:
        if column:
            raise MapoBenchError(f"prompt source {source!r}: a .txt file has one prompt per line and no columns; "
                                 f"drop ':{column}'")
        try:
            return path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise MapoBenchError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    frame = _read_table(path, suffix)
    return _column(frame, column, f"{path}")


def _read_table(path: Path, suffix: str):
    import pandas as pd

    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - parsers raise many types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MapoBenchError(f"{path}: cannot read as {suffix[1:]} ({first})") from None


def _column(frame, column: str | None, where: str) -> list[object]:
    columns = [str(c) for c in frame.columns]
    if column is None:
        column = next((c for c in DEFAULT_COLUMNS if c in columns), None)
        if column is None:
            raise MapoBenchError(f"{where}: no 'caption' or 'prompt' column (columns: {', '.join(columns) or 'none'}); "
                                 f"name one as {where}:COLUMN")
    elif column not in columns:
        raise MapoBenchError(f"{where}: no column {column!r} (columns: {', '.join(columns) or 'none'})")
    return list(frame[column])


def _read_hf(source: str) -> list[object]:
    body = source[len("hf://"):]
    parts = body.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        raise MapoBenchError(f"prompt source {source!r} is not hf://NAME:SPLIT:COLUMN "
                             "(example: hf://yuvalkirstain/pickapic_v2:validation_unique:caption)")
    name, split, column = parts
    try:
        import datasets

        dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, missing, bad split: one line either way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        offline = any(flag in first.lower() for flag in ("offline", "connection", "couldn't reach", "internet"))
        hint = ("offline: download it once with network access, or export the column to a .txt/.csv/.parquet "
                "file and pass that path") if offline else "check the name and split, or pass a local file"
        raise MapoBenchError(f"prompt source {source!r}: cannot load dataset {name!r} split {split!r} "
                             f"({type(exc).__name__}: {first[:160]}); {hint}") from None
    if column not in dataset.column_names:
        raise MapoBenchError(f"prompt source {source!r}: no column {column!r} "
                             f"(columns: {', '.join(dataset.column_names)})")
    return list(dataset[column])
