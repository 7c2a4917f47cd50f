"""The dataset card: HF front matter from the real counts, prose from data_cards/ (or the fallback)."""

from __future__ import annotations

import pytest
import yaml

from mapo_bench.config import validate
from mapo_bench.data import cards
from mapo_bench.data.config import BuildConfig
from mapo_bench.data.tasks import task_from_config


def manifest_for(cfg: BuildConfig, pairs: int = 7) -> dict:
    return {"config": cfg.model_dump(mode="json"), "config_hash": "abc", "model_id": "m",
            "counts": {"pairs": pairs, "prompts": pairs, "shards": 1, "bytes": 10, "file_bytes": 12},
            "backend": {"safety_checker": "disabled"}, "sampler": {"steps": 25}, "resolution": [64, 64]}


@pytest.mark.parametrize("kw, license_id", [
    ({"task": "pick-style", "split": "pixel-art"}, "openrail++"),
    ({"task": "pick-safety", "backend": "sd15"}, "creativeml-openrail-m"),
    ({"task": "custom", "chosen_prefix": "A.", "backend": "toy"}, "apache-2.0"),
])
def test_front_matter_holds_counts_license_and_data_files(kw, license_id):
    cfg = validate(BuildConfig, kw)
    text = cards.render_card(task_from_config(cfg), manifest_for(cfg, pairs=1234))
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["license"] == license_id
    assert header["dataset_info"]["splits"] == [{"name": "train", "num_bytes": 10, "num_examples": 1234}]
    assert header["configs"][0]["data_files"] == [{"split": "train", "path": "data/train-*"}]
    assert header["size_categories"] == ["1K<n<10K"]
    assert [f["name"] for f in header["dataset_info"]["features"]][:5] == ["caption", "jpg_0", "jpg_1", "label_0", "label_1"]
    assert ("not-for-all-audiences" in header["tags"]) == (cfg.task == "pick-safety" and cfg.backend != "toy")


def test_card_fallback_template_when_data_cards_is_absent(tmp_path, monkeypatch):
    """An installed wheel has no data_cards/ folder: the card still renders, with the warning and counts."""
    monkeypatch.setattr(cards, "templates_dir", lambda: tmp_path / "absent")
    cfg = validate(BuildConfig, {"task": "pick-safety"})
    text = cards.render_card(task_from_config(cfg), manifest_for(cfg))
    assert "num_examples: 7" in text and "Content warning" in text and "not-for-all-audiences" in text
    assert "${" not in text
