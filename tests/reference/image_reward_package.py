"""Scores of the tiny ImageReward model by the ``image-reward`` package itself, for tests/test_image_reward.py.

Not part of the suite (the package cannot sit beside transformers 5, see mapo_bench/evaluators/image_reward.py).
To regenerate the expected numbers, in a virtual environment that sees this repository:

    python3 -m venv --system-site-packages /tmp/irvenv
    /tmp/irvenv/bin/pip install "transformers==4.44.2" "timm==0.6.13" "fairscale==0.4.13"
    /tmp/irvenv/bin/pip install --no-deps "image-reward==1.5"
    /tmp/irvenv/bin/python tests/reference/image_reward_package.py

It builds the package's ``ImageReward`` with the tiny model's sizes (its ViT and tokenizer swapped in where the
package hard-codes ViT-L and the hub's bert-base-uncased), loads the tiny ``ImageReward.pt`` strictly (the
package itself loads with ``strict=False``, which would hide a wrong key) and prints its ``score`` for each
image and caption of ``image_reward_cases``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import importlib.util
    import types

    import torch

    sys.modules.setdefault("clip", types.ModuleType("clip"))  # the package's CLIP-score helpers import OpenAI's clip
    # The package's __init__ also imports its training code (ReFL: datasets, diffusers); only the model is needed.
    root = types.ModuleType("ImageReward")
    root.__path__ = [str(Path(importlib.util.find_spec("ImageReward").origin).parent)]
    sys.modules["ImageReward"] = root
    import ImageReward.ImageReward as package
    from image_reward_cases import cases
    from ImageReward.models.BLIP import blip_pretrain
    from ImageReward.models.BLIP.vit import VisionTransformer
    from transformers import BertTokenizer

    from mapo_bench.evaluators.tiny import TINY_IMAGE_REWARD_VISION, build_tiny_image_reward

    folder = build_tiny_image_reward(Path(tempfile.mkdtemp()) / "ImageReward")
    vision = TINY_IMAGE_REWARD_VISION

    def tiny_vit(*args, **kwargs):
        vit = VisionTransformer(img_size=vision["image_size"], patch_size=vision["patch_size"],
                                embed_dim=vision["hidden_size"], depth=vision["num_hidden_layers"],
                                num_heads=vision["num_attention_heads"],
                                mlp_ratio=vision["intermediate_size"] / vision["hidden_size"])
        return vit, vision["hidden_size"]

    def tiny_tokenizer():
        tokenizer = BertTokenizer.from_pretrained(str(folder))
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
        return tokenizer

    blip_pretrain.create_vit = tiny_vit
    blip_pretrain.init_tokenizer = tiny_tokenizer
    model = package.ImageReward(med_config=str(folder / "med_config.json"))
    model.mlp = package.MLP(json.loads((folder / "med_config.json").read_text())["hidden_size"])
    model.load_state_dict(torch.load(folder / "ImageReward.pt", map_location="cpu"), strict=True)
    model.eval()
    with torch.no_grad():
        scores = [model.score(prompt, image) for image, prompt in cases()]
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
