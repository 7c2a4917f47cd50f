"""Real-size pipelines for the step benchmark, built offline: the released UNet architectures of SD1.5 and
SDXL (their published configs, random init) with small stand-ins for the parts the latent cache takes out of
the step (text encoders with the real output widths but one layer, a VAE with the real 8x downsampling but
narrow channels). Step time and memory of the trained UNet are then those of the real model; the frozen
encoders only have to produce tensors of the right shapes once, for the cache."""

from __future__ import annotations

from pathlib import Path

# UNet2DConditionModel's keyword arguments as in the released unet/config.json of each model
# (runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-xl-base-1.0); everything else is the class's default.
UNET_CONFIGS = {
    "sd15": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    "sdxl": dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
}
PUBLISHED_PARAMETERS = {"sd15": 859_520_964, "sdxl": 2_567_463_684}  # the released UNets' parameter counts


def unet(size: str):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIGS[size])


def _text(hidden: int, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=hidden, num_attention_heads=8, num_hidden_layers=1,
                            max_position_embeddings=77, vocab_size=49408, bos_token_id=49406, eos_token_id=49407,
                            pad_token_id=49407, hidden_act="gelu", projection_dim=projection or hidden)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(8, 16, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    vae.register_to_config(scaling_factor=scaling_factor)
    return vae


def build_real_size(folder: str | Path, size: str, seed: int = 0) -> Path:
    """A diffusers pipeline folder with the real-size UNet of ``size`` ("sd15" or "sdxl"), random init."""
    import torch
    from diffusers import (
        DDIMScheduler,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    from mapo_bench.clip_tokenizer import load_clip_tokenizer

    torch.manual_seed(seed)
    folder = Path(folder)
    if size == "sd15":
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(vae=_vae(0.18215), text_encoder=_text(768), tokenizer=load_clip_tokenizer(),
                                       unet=unet(size), scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    elif size == "sdxl":
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           timestep_spacing="leading", steps_offset=1)
        pipe = StableDiffusionXLPipeline(vae=_vae(0.13025), text_encoder=_text(768), text_encoder_2=_text(1280, 1280),
                                         tokenizer=load_clip_tokenizer(), tokenizer_2=load_clip_tokenizer(pad_token="!"),
                                         unet=unet(size), scheduler=scheduler, add_watermarker=False)
    else:
        raise SystemExit(f"--size {size}: sd15 or sdxl")
    pipe.save_pretrained(folder)
    return folder
