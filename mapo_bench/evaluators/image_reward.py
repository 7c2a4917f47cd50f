"""ImageReward (Xu et al., 2023, arXiv 2304.05977): a BLIP reward model of human text-to-image preference.

REFERENCE.md section 4. The score of an image for its caption: the caption's BERT encoding cross-attending to
the BLIP ViT-L/16 image tokens, the [CLS] row through a linear MLP (768-1024-128-64-16-1, no activations:
the aesthetic predictor's layout), standardised as ``(r - 0.16717362830052426) / 1.0333394966054072``.
Images: shortest side to 224 (bicubic), centre crop 224, CLIP mean / std; captions: the ``bert-base-uncased``
WordPiece tokenizer (with BLIP's added ``[DEC]`` and ``[ENC]``), padded and truncated to 35 tokens.

Why transformers' BLIP classes and not the ``image-reward`` package: its 1.5 release pins ``timm==0.6.13`` and
``fairscale==0.4.13`` and imports transformers 4 internals, so it cannot sit beside transformers 5 here. The
published ``ImageReward.pt`` state dict is renamed into ``BlipVisionModel`` + ``BlipTextModel`` (same
layers); ``tests/test_image_reward.py`` checks the scores against the package's own on a tiny random model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mapo_bench.errors import MapoBenchError
from mapo_bench.evaluators.aesthetic import AestheticMLP
from mapo_bench.evaluators.backbones import CLIP_MEAN, CLIP_STD, rgb, to_numpy64
from mapo_bench.evaluators.base import Evaluator, ScoreContext, no_options
from mapo_bench.models import resolve_model

IMAGE_REWARD_REPO = "THUDM/ImageReward"
IMAGE_REWARD_FILE = "ImageReward.pt"
MED_CONFIG = "med_config.json"
BERT_TOKENIZER = "google-bert/bert-base-uncased"
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_TOKENS = 35
# BLIP's ViT-L/16 at 224 px (BLIP's create_vit('large')): timm layer norms (eps 1e-6), exact GELU.
VIT_LARGE = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
             "image_size": 224, "patch_size": 16}
UNUSED = ("blip.vision_proj.", "blip.text_proj.")  # BLIP's contrastive heads: the reward does not read them

# ImageReward.pt names -> this module's (vision: timm's ViT names -> BlipVisionModel's; text: the same BERT
# names); "{i}" is a layer number, a name without a trailing dot is a whole key.
KEY_MAP = (
    ("blip.visual_encoder.cls_token", "vision.embeddings.class_embedding"),
    ("blip.visual_encoder.pos_embed", "vision.embeddings.position_embedding"),
    ("blip.visual_encoder.patch_embed.proj.", "vision.embeddings.patch_embedding."),
    ("blip.visual_encoder.blocks.{i}.norm1.", "vision.encoder.layers.{i}.layer_norm1."),
    ("blip.visual_encoder.blocks.{i}.norm2.", "vision.encoder.layers.{i}.layer_norm2."),
    ("blip.visual_encoder.blocks.{i}.attn.qkv.", "vision.encoder.layers.{i}.self_attn.qkv."),
    ("blip.visual_encoder.blocks.{i}.attn.proj.", "vision.encoder.layers.{i}.self_attn.projection."),
    ("blip.visual_encoder.blocks.{i}.mlp.", "vision.encoder.layers.{i}.mlp."),
    ("blip.visual_encoder.norm.", "vision.post_layernorm."),
    ("blip.text_encoder.", "text."),
    ("mlp.layers.", "head.layers."),
)


def rename_key(key: str, to_original: bool = False) -> str | None:
    """``key`` in the other naming (``ImageReward.pt``'s -> this module's, or back), None if no rule matches."""
    for source, target in KEY_MAP:
        if to_original:
            source, target = target, source
        pattern = "^" + re.escape(source).replace(re.escape("{i}"), r"(\d+)") + ("" if source.endswith(".") else "$")
        new, count = re.subn(pattern, target.replace("{i}", r"\1"), key)
        if count:
            return new
    return None


def image_reward_score(rewards: torch.Tensor) -> torch.Tensor:
    """``(N, 1)`` or ``(N,)`` raw MLP outputs -> ``(N,)`` ImageReward scores, ``(r - mean) / std`` with the
    package's constants (REFERENCE.md section 4)."""
    return (rewards.reshape(-1).double() - REWARD_MEAN) / REWARD_STD


def rename_checkpoint(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """An ``ImageReward.pt`` state dict in this module's names; an unknown key is a one-line error."""
    renamed = {}
    for key, value in state.items():
        if key.startswith(UNUSED) or key.endswith("embeddings.position_ids"):
            continue  # position_ids: a buffer transformers rebuilds
        new = rename_key(key)
        if new is None:
            raise MapoBenchError(f"{source}: unexpected key {key!r} for an ImageReward checkpoint")
        renamed[new] = value
    return renamed


class RewardModel(torch.nn.Module):
    """BLIP's image encoder, its image-grounded text encoder and the reward head."""

    def __init__(self, vision: dict[str, Any], text: dict[str, Any]) -> None:
        from transformers import BlipTextConfig, BlipVisionConfig
        from transformers.models.blip.modeling_blip import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        super().__init__()
        vision_config = BlipVisionConfig(**{**vision, "layer_norm_eps": 1e-6, "hidden_act": "gelu"})
        self.vision = BlipVisionModel(vision_config)
        self.text = BlipTextModel(BlipTextConfig(**{**text, "encoder_hidden_size": vision_config.hidden_size}),
                                  add_pooling_layer=False)
        self.head = AestheticMLP((self.text.config.hidden_size, 1024, 128, 64, 16, 1))

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image = self.vision(pixel_values=pixels).last_hidden_state
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        text = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image,
                         encoder_attention_mask=image_mask, is_decoder=False).last_hidden_state
        return self.head(text[:, 0].float())


def text_config(med_config: Path) -> dict[str, Any]:
    """The BERT settings of BLIP's ``med_config.json`` that ``BlipTextConfig`` takes."""
    med = json.loads(med_config.read_text())
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "layer_norm_eps", "hidden_act", "pad_token_id")
    missing = [k for k in keys[:5] if k not in med]
    if missing:
        raise MapoBenchError(f"{med_config}: missing {', '.join(missing)} (BLIP's med_config.json layout)")
    return {k: med[k] for k in keys if k in med}


def load_tokenizer(source: str) -> Any:
    """``bert-base-uncased``'s WordPiece tokenizer from a folder or repo id, with BLIP's two added tokens."""
    from transformers import BertTokenizer

    from mapo_bench.errors import ModelNotFoundError
    from mapo_bench.evaluators.backbones import resolve_folder

    try:
        folder = resolve_folder(source, ("vocab.txt",), optional=("tokenizer_config.json",))
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"imagereward's tokenizer: {exc}; or name a folder holding bert-base-uncased's "
                                 "vocab.txt with the eval option imagereward.tokenizer") from None
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def preprocessing(size: int) -> Any:
    """PIL image -> ``(3, size, size)``: shortest side to ``size`` (bicubic), centre crop, CLIP mean / std (the
    package's torchvision transform)."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(size), transforms.ToTensor(),
                               transforms.Normalize(CLIP_MEAN, CLIP_STD)])


class ImageReward(Evaluator):
    name: ClassVar[str] = "imagereward"
    version = "v1.0"

    def __init__(self, model: RewardModel, tokenizer: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.tokenizer, self.device, self.dtype = model, tokenizer, device, dtype
        self.preprocess = preprocessing(model.vision.config.image_size)

    @classmethod
    def load(cls, device: str = "cpu", dtype: str = "float32", model: str = IMAGE_REWARD_REPO,
             tokenizer: str | None = None, arch: dict[str, Any] | None = None, **options: Any) -> ImageReward:
        """``model``: a folder (or repo id) holding ``ImageReward.pt`` and ``med_config.json``; ``tokenizer``:
        the ``bert-base-uncased`` files (``vocab.txt``; default: the model folder when it holds them, else
        ``google-bert/bert-base-uncased``); ``arch``: the ViT's settings (default BLIP's ViT-L)."""
        from mapo_bench.evaluators.checkpoints import load_checkpoint, load_into

        no_options(cls.name, options)
        weights = resolve_model(model, filename=IMAGE_REWARD_FILE)
        med_config = resolve_model(model, filename=MED_CONFIG)
        for path in (weights, med_config):
            if not path.is_file():
                raise MapoBenchError(f"imagereward: {path} not found; {IMAGE_REWARD_REPO} holds {IMAGE_REWARD_FILE} "
                                     f"and {MED_CONFIG}")
        reward = RewardModel(arch or VIT_LARGE, text_config(med_config))
        state = rename_checkpoint(load_checkpoint(weights, "ImageReward"), weights)
        target, torch_type = load_into(reward, state, weights, "the ImageReward model", device, dtype)
        reward.head.to(torch.float32)  # the package scores the [CLS] row in float32, whatever the encoders' dtype
        if tokenizer is None:
            tokenizer = str(weights.parent) if (weights.parent / "vocab.txt").is_file() else BERT_TOKENIZER
        return cls(reward, load_tokenizer(tokenizer), target, torch_type)

    @torch.no_grad()
    def score(self, images: list[Any], prompts: list[str], context: ScoreContext | None = None) -> np.ndarray:
        pixels = torch.stack([self.preprocess(image) for image in rgb(images)]).to(self.device, self.dtype)
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_TOKENS,
                                return_tensors="pt")
        rewards = self.model(pixels, tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device))
        return to_numpy64(image_reward_score(rewards))
