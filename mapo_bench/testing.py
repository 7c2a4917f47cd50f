"""Offline tiny-model kit: seeded random-init models built from the real classes, saved in hub layout.

Every real loading path (``from_pretrained(local_dir)``) is tested on these, since this machine and
CI have no model hub. Tokenizers are real CLIP BPE tokenizers built from open_clip's vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mapo_bench.clip_tokenizer import load_clip_tokenizer

TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                 max_position_embeddings=77, vocab_size=49408, bos_token_id=49406, eos_token_id=49407,
                 pad_token_id=49407)


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                         in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, sample_size=64)


def build_tiny_sd15(folder: str | Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """A StableDiffusionPipeline with a 2-block UNet (32 latent px -> 64 px images), saved to ``folder``."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type=prediction_type)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    pipe = StableDiffusionPipeline(vae=_tiny_vae(), text_encoder=text_encoder, tokenizer=load_clip_tokenizer(),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder


def build_tiny_sdxl(folder: str | Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """A StableDiffusionXLPipeline with tiny UNet, VAE and two text encoders, saved to ``folder``.

    Sizes that must agree: cross_attention_dim = hidden(te1) + hidden(te2);
    projection_class_embeddings_input_dim = 6 * addition_time_embed_dim + projection_dim(te2).
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    _seeded(seed)
    addition_time_embed_dim, projection_dim = 8, 32
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + projection_dim,
        cross_attention_dim=TINY_TEXT["hidden_size"] * 2, norm_num_groups=8)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1, prediction_type=prediction_type)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT, hidden_act="gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT, hidden_act="gelu",
                                                                projection_dim=projection_dim))
    vae = _tiny_vae()
    vae.register_to_config(scaling_factor=0.13025)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=load_clip_tokenizer(), tokenizer_2=load_clip_tokenizer(pad_token="!"),
                                     unet=unet, scheduler=scheduler, add_watermarker=False)
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder


def build_tiny_clip(folder: str | Path, seed: int = 0, projection_dim: int = 16, image_size: int = 32) -> Path:
    """A transformers CLIPModel + CLIPProcessor (tiny ViT) in hub layout, for PickScore/CLIP/aesthetic tests."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    _seeded(seed)
    text = CLIPTextConfig(**TINY_TEXT)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                              image_size=image_size, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                 projection_dim=projection_dim))
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=load_clip_tokenizer())
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny_open_clip_config(embed_dim: int = 16, image_size: int = 32) -> dict:
    """An open_clip model config (same structure as ViT-H-14, tiny widths) for HPS tests."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
    }
