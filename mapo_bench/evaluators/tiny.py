"""Tiny random-init evaluator weights in the real file layouts, for offline tests and benchmarks.

Each builder writes what the matching evaluator loads from the hub: an HPS checkpoint
(``{"state_dict": ...}`` of an open_clip model), a diffusers safety checker folder with its image
processor, and an aesthetic MLP state dict. The CLIP backbone itself is
``mapo_bench.testing.build_tiny_clip``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mapo_bench.testing import TINY_TEXT, tiny_open_clip_config


def build_tiny_hps(folder: str | Path, seed: int = 0, versions: tuple[str, ...] = ("v2.1", "v2.0"),
                   embed_dim: int = 16, image_size: int = 32) -> Path:
    """``folder/HPS_v2.1_compressed.pt`` (and v2.0) holding tiny open_clip state dicts (seed, seed + 1, ...)."""
    import open_clip

    from mapo_bench.evaluators.hps import HPS_FILES

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for offset, version in enumerate(versions):
        torch.manual_seed(seed + offset)
        model = open_clip.CLIP(**tiny_open_clip_config(embed_dim, image_size))
        torch.save({"state_dict": model.state_dict()}, folder / HPS_FILES[version])
    return folder


def build_tiny_safety_checker(folder: str | Path, seed: int = 0, projection_dim: int = 16,
                              image_size: int = 32) -> Path:
    """A ``StableDiffusionSafetyChecker`` with a tiny ViT and random concept embeddings / thresholds.

    Thresholds are drawn near the cosines random embeddings reach (about +-0.3), so some images are
    flagged and some are not.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPVisionConfig

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                              image_size=image_size, patch_size=8)
    config = CLIPConfig(text_config=CLIPTextConfig(**TINY_TEXT).to_dict(), vision_config=vision.to_dict(),
                        projection_dim=projection_dim)
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds.copy_(torch.randn_like(checker.concept_embeds))
        checker.special_care_embeds.copy_(torch.randn_like(checker.special_care_embeds))
        checker.concept_embeds_weights.copy_(0.2 * torch.randn_like(checker.concept_embeds_weights))
        checker.special_care_embeds_weights.copy_(0.2 * torch.randn_like(checker.special_care_embeds_weights))
    folder = Path(folder)
    checker.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def build_tiny_aesthetic(path: str | Path, input_dim: int = 16, seed: int = 0) -> Path:
    """A random aesthetic MLP (input_dim-1024-128-64-16-1, the real layout) saved as a ``.pth`` state dict."""
    from mapo_bench.evaluators.aesthetic import AestheticMLP

    torch.manual_seed(seed)
    mlp = AestheticMLP((input_dim, 1024, 128, 64, 16, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(mlp.state_dict(), path)
    return path


def build_tiny_dino(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A random ViT (patch 16, as DINO ViT-S/16) with a ViTImageProcessor (ImageNet mean / std, as
    ``facebook/dino-vits16``'s), saved in hub layout, for the ``dino`` evaluator's tests."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                       image_size=image_size, patch_size=16)
    folder = Path(folder)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


TINY_WORDS = ("a", "an", "the", "of", "on", "in", "with", "and", "photo", "painting", "cat", "dog", "red", "blue",
              "green", "small", "large", "square", "circle", "left", "right", "style", "cartoon", "##s", "##ing", ",", ".")
TINY_IMAGE_REWARD_VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                            "intermediate_size": 64, "image_size": 224, "patch_size": 16}


def build_tiny_image_reward(folder: str | Path, seed: int = 0) -> Path:
    """A random ImageReward in the published layout: ``ImageReward.pt`` (BLIP's key names, the contrastive
    heads and position ids included, as the package's own state dict has them), ``med_config.json`` (a
    2-layer BERT of width 32) and a tiny uncased WordPiece ``vocab.txt``; its ViT is
    ``TINY_IMAGE_REWARD_VISION`` (224 px, as the package's fixed preprocessing needs)."""
    import json

    from mapo_bench.evaluators.image_reward import (
        IMAGE_REWARD_FILE,
        MED_CONFIG,
        RewardModel,
        rename_key,
        text_config,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    med = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
           "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
           "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": 4,
           "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": len(vocab) + 2,
           "encoder_width": 32, "add_cross_attention": True}
    (folder / MED_CONFIG).write_text(json.dumps(med, indent=2))
    torch.manual_seed(seed)
    model = RewardModel(TINY_IMAGE_REWARD_VISION, text_config(folder / MED_CONFIG))
    with torch.no_grad():  # random layer norms and biases too, so a swapped or dropped key changes the score
        for name, param in model.named_parameters():
            if name.endswith(("LayerNorm.weight", "layer_norm1.weight", "layer_norm2.weight", "post_layernorm.weight")):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            elif name.endswith("bias") or "embedding" in name:
                param.copy_(0.2 * torch.randn_like(param))
    state = {rename_key(key, to_original=True): value.clone() for key, value in model.state_dict().items()}
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(med["max_position_embeddings"]).expand(1, -1)
    for name, width in (("vision_proj", 32), ("text_proj", 32)):
        state[f"blip.{name}.weight"] = torch.randn(256, width) * 0.02
        state[f"blip.{name}.bias"] = torch.zeros(256)
    torch.save(state, folder / IMAGE_REWARD_FILE)
    return folder
