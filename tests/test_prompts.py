"""Prompt sources: built-in sets, toy captions, files, HF datasets; dedupe, sampling, one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mapo_bench.data.prompts import load_prompt_records, load_prompts, read_source
from mapo_bench.errors import MapoBenchError


def test_builtin_sets_are_large_disjoint_and_clean():
    parts = {split: read_source(f"builtin:{split}") for split in ("train", "validation", "test")}
    assert len(parts["train"]) >= 1000  # the SDXL recipes and pipelines sample 1,000 distinct prompts (as MaPO)
    assert len(parts["validation"]) >= 100 and len(parts["test"]) >= 100
    for split, raw in parts.items():
        assert all(line.strip() == line and line for line in raw), f"{split}: blank or padded line"
        assert len(set(raw)) == len(raw), f"{split}: duplicate prompt"
        assert load_prompts(f"builtin:{split}") == raw
    assert not set(parts["train"]) & set(parts["validation"])
    assert not set(parts["train"]) & set(parts["test"])
    assert not set(parts["validation"]) & set(parts["test"])
    # varied: many distinct first content words, not one template
    assert len({p.split()[1] for p in parts["train"]}) > 80


def test_toy_sources_are_the_toy_splits():
    from mapo_bench.toy.vocab import toy_prompts

    for split in ("train", "validation", "test"):
        assert load_prompts(f"toy:{split}") == toy_prompts(split)


def test_text_file_dedupes_normalises_and_ids_are_stable(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat\n\n  a   dog \na cat\n\t\na bird\n")
    assert load_prompt_records(str(path)) == [(0, "a cat"), (1, "a dog"), (2, "a bird")]


def test_sampling_is_seeded_nested_and_in_id_order():
    five = load_prompt_records("builtin:train", 5, seed=3)
    ten = load_prompt_records("builtin:train", 10, seed=3)
    assert load_prompt_records("builtin:train", 5, seed=3) == five
    assert [i for i, _ in ten] == sorted(i for i, _ in ten)
    assert set(five) <= set(ten)
    assert load_prompt_records("builtin:train", 5, seed=4) != five
    everything = read_source("builtin:train")
    assert all(everything[i] == p for i, p in ten)


def test_tables_default_and_named_columns(tmp_path):
    frame = pd.DataFrame({"caption": ["x one", "x two", "x one", None], "other": ["o1", "o2", "o3", "o4"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in ["j one", "", "j two"]) + "\n")
    assert load_prompts(str(tmp_path / "t.csv")) == ["x one", "x two"]
    assert load_prompts(str(tmp_path / "t.parquet")) == ["x one", "x two"]
    assert load_prompts(f"{tmp_path / 't.csv'}:other") == ["o1", "o2", "o3", "o4"]
    assert load_prompts(str(tmp_path / "t.jsonl")) == ["j one", "j two"]


def test_hf_source_reads_a_local_dataset(tmp_path):
    folder = tmp_path / "hfset"
    folder.mkdir()
    pd.DataFrame({"caption": ["h one", "h two"]}).to_parquet(folder / "train.parquet")
    assert load_prompts(f"hf://{folder}:train:caption") == ["h one", "h two"]


@pytest.mark.parametrize("source, needle", [
    ("builtin:bogus", "unknown split"),
    ("toy:nope", "unknown split"),
    ("missing.txt", "not found"),
    ("prompts.xyz", "not a known source"),
    ("hf://only-a-name", "hf://NAME:SPLIT:COLUMN"),
    ("hf://nobody/no-such-set:train:caption", "cannot load dataset"),
])
def test_bad_sources_are_one_line_errors(source, needle):
    with pytest.raises(MapoBenchError) as info:
        load_prompts(source)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_columns_and_counts_are_one_line_errors(tmp_path):
    pd.DataFrame({"text": ["a"]}).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "p.txt").write_text("a\nb\n")
    (tmp_path / "empty.txt").write_text("\n \n")
    cases = [(str(tmp_path / "t.csv"), "no 'caption' or 'prompt' column"),
             (f"{tmp_path / 't.csv'}:nope", "no column 'nope'"),
             (f"{tmp_path / 'p.txt'}:col", "no columns"),
             (str(tmp_path / "empty.txt"), "no non-empty prompts")]
    for source, needle in cases:
        with pytest.raises(MapoBenchError, match=needle):
            load_prompts(source)
    with pytest.raises(MapoBenchError, match="fewer than num_prompts=3"):
        load_prompts(str(tmp_path / "p.txt"), num_prompts=3)
