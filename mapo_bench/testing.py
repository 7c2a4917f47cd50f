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


T5_WORDS = ("a an the of in on at with and photo style image picture cartoon disney animated pixel art realistic "
            "8k sexual nudity dog cat person man woman red blue green yellow small large circle square triangle "
            "left right sks").split()


def build_t5_tokenizer():
    """A T5 tokenizer built offline (transformers' T5Tokenizer = a ``tokenizers`` Unigram model): T5's special
    ids (pad 0, eos 1, unk 2), whole words of a small prompt vocabulary, and single characters as fallback."""
    import string

    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in T5_WORDS]
    pieces += [(ch, -5.0) for ch in string.ascii_lowercase + string.digits + string.punctuation]
    pieces += [("\u2581" + ch, -4.0) for ch in string.ascii_lowercase + string.digits]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _tiny_t5(vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=2,
                                   num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def _tiny_flow_vae(latent_channels: int, scaling_factor: float, shift_factor: float):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, latent_channels=latent_channels,
                        norm_num_groups=8, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, sample_size=64, use_quant_conv=False,
                        use_post_quant_conv=False)
    vae.register_to_config(scaling_factor=scaling_factor, shift_factor=shift_factor)
    return vae


def build_tiny_sd3(folder: str | Path, seed: int = 0, t5: bool = True) -> Path:
    """A StableDiffusion3Pipeline (1-layer MMDiT, two tiny CLIPs, optional tiny T5), 64 px, saved to ``folder``.

    Sizes that must agree (REFERENCE.md section 6): joint_attention_dim >= hidden(clip1) + hidden(clip2) and
    = d_model(T5); pooled_projection_dim = projection(clip1) + projection(clip2)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    _seeded(seed)
    projection = 16
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64,
                                        caption_projection_dim=16, pooled_projection_dim=2 * projection,
                                        pos_embed_max_size=32)
    clip = dict(TINY_TEXT, hidden_act="gelu", projection_dim=projection)
    tokenizer_3 = build_t5_tokenizer() if t5 else None
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_flow_vae(4, 1.5305, 0.0609),
        text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**clip)), tokenizer=load_clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**clip)), tokenizer_2=load_clip_tokenizer(pad_token="!"),
        text_encoder_3=_tiny_t5(len(tokenizer_3), 64) if t5 else None, tokenizer_3=tokenizer_3)
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder


def build_tiny_flux(folder: str | Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """A FluxPipeline (1 double + 1 single block, tiny CLIP and T5), 64 px, saved to ``folder``.

    Sizes that must agree: in_channels = 4 x the VAE's latent channels (2x2 packing); sum(axes_dims_rope) =
    attention_head_dim; joint_attention_dim = d_model(T5); pooled_projection_dim = hidden(CLIP)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=TINY_TEXT["hidden_size"], guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(4, 6, 6))
    tokenizer_2 = build_t5_tokenizer()
    pipe = FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True,
                                                                           base_shift=0.5, max_shift=1.15),
        vae=_tiny_flow_vae(4, 0.3611, 0.1159),
        text_encoder=CLIPTextModel(CLIPTextConfig(**TINY_TEXT, hidden_act="gelu")), tokenizer=load_clip_tokenizer(),
        text_encoder_2=_tiny_t5(len(tokenizer_2), 32), tokenizer_2=tokenizer_2)
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder
