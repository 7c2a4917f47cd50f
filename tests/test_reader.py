"""Pair reader: opening the Pick-a-Pic layout, tie policies, label noise, errors, transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pairs_fixture import write_pairs

from mapo_bench.data.reader import crop_box, find_bad_rows, load_pair, open_pairs, resized_size, select_pairs
from mapo_bench.errors import MapoBenchError


def test_open_folder_reads_captions_labels_and_shards(tmp_path):
    folder = write_pairs(tmp_path / "d", n=7, ties=(3,), shards=2)
    source = open_pairs(folder)
    assert len(source) == 7
    assert source.captions[5].endswith(" 5")
    # rows alternate jpg_0 / jpg_1 winning; row 3 is a tie (written by the fixture).
    assert source.labels.tolist()[:4] == [[1, 0], [0, 1], [1, 0], [0.5, 0.5]]
    # row 6 sits in the second shard: its bytes must be those of the row-6 image.
    raw = source.image_bytes(6, "jpg_1")
    assert isinstance(raw, bytes) and raw[:4] == b"\x89PNG"
    assert len(source.fingerprint) == 16


def test_fingerprint_changes_with_content(tmp_path):
    a = open_pairs(write_pairs(tmp_path / "a", n=4, seed=0)).fingerprint
    b = open_pairs(write_pairs(tmp_path / "b", n=4, seed=1)).fingerprint
    assert a != b


def test_int_labels_accepted(tmp_path):
    source = open_pairs(write_pairs(tmp_path / "d", n=4, int_labels=True))
    assert source.labels.dtype == np.float64 and source.labels.tolist()[1] == [0, 1]


def test_tie_policies(tmp_path):
    """8 rows, ties at 2 and 5. drop -> 6 pairs; half -> 8 pairs with p0 = 0.5 at the ties;
    random -> 8 pairs, ties get p0 in {0, 1}, the same for the same seed. Non-ties: p0 = 1 when
    label_0 > label_1 (even rows), else 0."""
    source = open_pairs(write_pairs(tmp_path / "d", n=8, ties=(2, 5)))
    drop = select_pairs(source, "drop")
    assert drop.rows.tolist() == [0, 1, 3, 4, 6, 7]
    assert drop.p0.tolist() == [1, 0, 0, 1, 1, 0]
    assert drop.counts["ties"] == 2 and drop.counts["pairs"] == 6
    half = select_pairs(source, "half")
    assert half.rows.tolist() == list(range(8)) and half.p0[2] == 0.5 and half.p0[5] == 0.5
    rand1, rand2 = select_pairs(source, "random", seed=3), select_pairs(source, "random", seed=3)
    assert set(rand1.p0[[2, 5]].tolist()) <= {0.0, 1.0}
    assert rand1.p0.tolist() == rand2.p0.tolist()
    with pytest.raises(MapoBenchError, match="tie policy"):
        select_pairs(source, "keep")


def test_all_ties_dropped_is_an_error(tmp_path):
    source = open_pairs(write_pairs(tmp_path / "d", n=3, ties=(0, 1, 2)))
    with pytest.raises(MapoBenchError, match="no pairs left"):
        select_pairs(source, "drop")


def test_label_noise_and_max_samples(tmp_path):
    """label_noise = 0.5 over 200 pairs flips about half (binomial, 200 * 0.5 +- 3 sd = 100 +- 21);
    flipped pairs have p0 = 1 - original; seeded, so two calls agree. max_samples keeps the first rows."""
    source = open_pairs(write_pairs(tmp_path / "d", n=200, size=(8, 8)))
    clean = select_pairs(source, "drop")
    noisy = select_pairs(source, "drop", label_noise=0.5, seed=1)
    flipped = int((clean.p0 != noisy.p0).sum())
    assert flipped == noisy.counts["labels_flipped"] and 79 <= flipped <= 121
    assert noisy.p0.tolist() == select_pairs(source, "drop", label_noise=0.5, seed=1).p0.tolist()
    assert select_pairs(source, "drop", max_samples=5).rows.tolist() == [0, 1, 2, 3, 4]


def test_missing_column_error_names_column(tmp_path):
    folder = write_pairs(tmp_path / "d", n=2, drop_columns=("jpg_1",))
    with pytest.raises(MapoBenchError, match="missing column 'jpg_1'"):
        open_pairs(folder)


def test_missing_dataset_and_empty_folder(tmp_path):
    with pytest.raises(MapoBenchError, match="no such folder"):
        open_pairs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MapoBenchError, match="no parquet files"):
        open_pairs(tmp_path / "empty")


def test_bad_image_error_names_row_and_column_and_skip(tmp_path):
    source = open_pairs(write_pairs(tmp_path / "d", n=4, bad={2: "jpg_1"}))
    with pytest.raises(MapoBenchError, match=r"row 2 column 'jpg_1': cannot decode"):
        load_pair(source, 2, 32)
    bad = find_bad_rows(source)
    assert list(bad) == [2]
    selection = select_pairs(source, "drop", bad_rows=bad)
    assert 2 not in selection.rows.tolist() and selection.counts["bad_rows_skipped"] == 1


def test_crop_geometry():
    """Shorter side -> resolution: (40, 48) at 32 -> (32, 38); center crop offsets round((32-32)/2)=0,
    round((38-32)/2)=3; random crop with u=(0.99, 0.99) -> int(0.99*1)=0, int(0.99*7)=6."""
    assert resized_size(40, 48, 32) == (32, 38)
    assert resized_size(48, 40, 32) == (38, 32)
    assert crop_box(32, 38, 32, "center") == (0, 3)
    assert crop_box(32, 38, 32, "random", (0.99, 0.99)) == (0, 6)


def test_load_pair_sizes_time_ids_and_shared_flip(tmp_path):
    """jpg_1 of another size is resized to jpg_0's size first; original size and crop are jpg_0's;
    the flip mirrors both images the same way; pixels are in [-1, 1]."""
    source = open_pairs(write_pairs(tmp_path / "d", n=2, size=(40, 48), size_1=(20, 30)))
    plain = load_pair(source, 0, 32)
    assert plain.original_size == (40, 48) and plain.crop_top_left == (0, 3)
    assert plain.pixels[0].shape == plain.pixels[1].shape == (3, 32, 32)
    assert plain.pixels[0].min() >= -1 and plain.pixels[0].max() <= 1
    flipped = load_pair(source, 0, 32, flip=True)
    for i in (0, 1):
        assert torch.equal(flipped.pixels[i], torch.flip(plain.pixels[i], dims=[2]))


def test_image_bytes_read_by_row_group_with_bounded_memory(tmp_path, monkeypatch):
    """Rows rewritten with 2 rows per row group (12 rows -> 6 groups over 2 shards); with at most 2 groups
    kept, reading every row returns each row's own bytes and the cache never holds more than 2 groups."""
    import pandas as pd
    import pyarrow.parquet as pq

    import mapo_bench.data.reader as reader

    folder = write_pairs(tmp_path / "ds", n=12, shards=2)
    expected = []
    for shard in sorted((folder / "data").glob("*.parquet")):
        frame = pd.read_parquet(shard)
        expected += list(frame["jpg_1"])
        pq.write_table(pq.read_table(shard), shard, row_group_size=2)
    monkeypatch.setattr(reader, "CACHED_ROW_GROUPS", 2)
    source = open_pairs(str(folder))
    for row in [*range(12), 0, 11, 5]:
        assert source.image_bytes(row, "jpg_1") == expected[row]
        assert len(source._groups) <= 2
