"""The ``imagereward`` evaluator: the ``image-reward`` package's scores on a tiny random model, the
standardisation by hand, and one-line errors for a checkpoint that does not fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from image_reward_cases import cases

from mapo_bench.errors import MapoBenchError

# ImageReward 1.5's own ``score`` of each of image_reward_cases.cases() on build_tiny_image_reward(seed 0),
# printed by tests/reference/image_reward_package.py (image-reward 1.5, transformers 4.44.2, timm 0.6.13,
# torch 2.x on CPU). Resizing without the centre crop moves them by 1.3e-4, 40 tokens instead of 35 by 1.7e-5.
PACKAGE_SCORES = [-0.10248912125825882, -0.10329332202672958, -0.10276670753955841, -0.10236503928899765]


@pytest.fixture(scope="module")
def tiny_reward(tmp_path_factory):
    from mapo_bench.evaluators.tiny import build_tiny_image_reward

    return build_tiny_image_reward(tmp_path_factory.mktemp("imagereward") / "ImageReward")


def load(folder):
    from mapo_bench.evaluators.image_reward import ImageReward
    from mapo_bench.evaluators.tiny import TINY_IMAGE_REWARD_VISION

    return ImageReward.load(model=str(folder), tokenizer=str(folder), arch=TINY_IMAGE_REWARD_VISION)


def test_scores_equal_the_packages_on_a_tiny_model(tiny_reward):
    images, captions = zip(*cases(), strict=True)
    scores = load(tiny_reward).score(list(images), list(captions))
    assert scores.dtype == np.float64 and scores.shape == (4,)
    assert np.abs(scores - np.array(PACKAGE_SCORES)).max() < 1e-6  # measured 3e-8 (float32 order)


def test_standardisation_by_hand():
    """(r - 0.16717362830052426) / 1.0333394966054072: r = mean -> 0, mean + std -> 1, mean - 2 std -> -2."""
    from mapo_bench.evaluators.image_reward import REWARD_MEAN, REWARD_STD, image_reward_score

    raw = torch.tensor([[REWARD_MEAN], [REWARD_MEAN + REWARD_STD], [REWARD_MEAN - 2 * REWARD_STD], [0.0]])
    got = image_reward_score(raw).numpy()
    assert got[:3] == pytest.approx([0.0, 1.0, -2.0], abs=1e-7)
    assert got[3] == pytest.approx(-0.16178, abs=1e-5)  # -0.16717 / 1.03334


def test_a_checkpoint_with_an_unknown_key_is_one_line(tiny_reward, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_reward, bad)
    state = torch.load(bad / "ImageReward.pt", weights_only=True)
    state["blip.itm_head.weight"] = torch.zeros(2, 32)
    torch.save(state, bad / "ImageReward.pt")
    with pytest.raises(MapoBenchError, match=r"unexpected key 'blip\.itm_head\.weight'") as info:
        load(bad)
    assert "\n" not in str(info.value)


def test_a_checkpoint_of_other_sizes_is_one_line(tiny_reward, tmp_path):
    from mapo_bench.evaluators.image_reward import ImageReward
    from mapo_bench.evaluators.tiny import TINY_IMAGE_REWARD_VISION

    wider = {**TINY_IMAGE_REWARD_VISION, "hidden_size": 64}  # a ViT the checkpoint's width-32 weights do not fit
    with pytest.raises(MapoBenchError, match="does not fit the ImageReward model") as info:
        ImageReward.load(model=str(tiny_reward), tokenizer=str(tiny_reward), arch=wider)
    assert "\n" not in str(info.value)


def test_the_tokenizer_comes_from_the_model_folder_or_names_its_option(tiny_reward, tmp_path):
    import shutil

    from mapo_bench.errors import ModelNotFoundError
    from mapo_bench.evaluators.image_reward import ImageReward
    from mapo_bench.evaluators.tiny import TINY_IMAGE_REWARD_VISION

    ImageReward.load(model=str(tiny_reward), arch=TINY_IMAGE_REWARD_VISION)  # vocab.txt beside the weights
    bare = tmp_path / "bare"
    shutil.copytree(tiny_reward, bare)
    (bare / "vocab.txt").unlink()
    with pytest.raises(ModelNotFoundError, match="google-bert/bert-base-uncased") as info:
        ImageReward.load(model=str(bare), arch=TINY_IMAGE_REWARD_VISION)
    assert "imagereward.tokenizer" in str(info.value) and "\n" not in str(info.value)
