"""The toy diffusion model: a small UNet2DConditionModel on a small jointly trained CLIP text encoder.

Why this shape (TOY_NOTES.md, measured): v prediction; pooled text on the global path with
scale-shift conditioning; cross-attention at the lowest resolution only; a bag of learned word
embeddings next to the pooled text on the global path (what made left/right learnable); two
coordinate input channels; DDIM with trailing spacing and guidance 2 for sampling.

Pixel space, made cheap: a fixed lossless "autoencoder" ``pixel_unshuffle(2)`` maps a 32x32x3 image
in [-1, 1] to a 16x16x12 latent and back, so the UNet runs at 16x16 while staying exact in pixels.

Tokens: the real CLIP BPE tokenizer splits the caption; its ids are then mapped onto the toy
vocabulary (the CLIP tokens the toy grammar uses, stored with the model), so the embedding table has
a few dozen rows instead of 49408 (a few MiB of weights instead of 13). Words outside the grammar map
to ``<unk>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mapo_bench.errors import MapoBenchError
from mapo_bench.toy import vocab
from mapo_bench.toy.config import ToyModelConfig

PIPELINE_FILE = "toy_pipeline.json"
BOS, EOS, UNK = 0, 1, 2  # toy ids; EOS also pads (as in SD's CLIP), 2 is not EOS (CLIP's legacy pooling)
FACTOR = 2  # pixel_unshuffle factor
IMAGE_SIZE = 32


# -- the fixed "autoencoder" ----------------------------------------------------------------------
def pixels_to_latents(pixels: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 32, 32)`` in [-1, 1] -> ``(B, 12, 16, 16)`` (lossless space-to-depth)."""
    return F.pixel_unshuffle(pixels, FACTOR)


def latents_to_pixels(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pixels_to_latents`."""
    return F.pixel_shuffle(latents, FACTOR)


def coordinate_channels(batch: int, height: int, width: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """Two channels with x and y in [-1, 1] (a position cue for the convolutional UNet)."""
    ys = torch.linspace(-1, 1, height, device=device, dtype=dtype)
    xs = torch.linspace(-1, 1, width, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y]).expand(batch, 2, height, width)


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a), mode="RGB") for a in arr]


def from_pil(images: list[Any]) -> torch.Tensor:
    """PIL images (any size; resized to 32 px) -> ``(B, 3, 32, 32)`` float in [-1, 1]."""
    arrays = []
    for img in images:
        img = img.convert("RGB")
        if img.size != (IMAGE_SIZE, IMAGE_SIZE):
            img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        arrays.append(np.asarray(img, dtype=np.float32))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


# -- tokens ---------------------------------------------------------------------------------------
def grammar_strings() -> list[str]:
    """Every word group the toy grammar writes (prefixes, plain captions), for the toy vocabulary."""
    strings = list(vocab.all_plain_captions()) + list(vocab.RESERVED_WORDS)
    strings += [vocab.unsafe_prefix(level) for level in vocab.MARKER_LEVELS]
    for style in vocab.STYLES:
        for alpha in vocab.BLEND_LEVELS:
            strings.append(vocab.style_prefix(style, alpha))
    return strings


@lru_cache(maxsize=1)
def _clip_tokenizer():
    from mapo_bench.clip_tokenizer import load_clip_tokenizer

    return load_clip_tokenizer()


def build_token_list() -> list[int]:
    """CLIP ids used by the grammar, sorted; toy id = 3 + index (0-2 are BOS, EOS, UNK)."""
    tok = _clip_tokenizer()
    ids: set[int] = set()
    for text in grammar_strings():
        ids.update(tok(text, add_special_tokens=False)["input_ids"])
    return sorted(ids)


class ToyTokenizer:
    """Real CLIP BPE tokenization, then CLIP id -> toy id; fixed length with EOS padding."""

    def __init__(self, clip_ids: list[int], max_length: int) -> None:
        self.clip_ids = list(clip_ids)
        self.max_length = max_length
        self.table = {cid: i + 3 for i, cid in enumerate(self.clip_ids)}

    @property
    def vocab_size(self) -> int:
        return len(self.clip_ids) + 3

    def token_counts(self, captions: list[str]) -> list[int]:
        """Tokens of each caption before truncation to ``max_length``, BOS and EOS included."""
        tok = _clip_tokenizer()
        return [len(tok(text, add_special_tokens=False)["input_ids"]) + 2 for text in captions]

    def __call__(self, captions: list[str]) -> torch.Tensor:
        tok = _clip_tokenizer()
        rows = []
        for text in captions:
            ids = [self.table.get(i, UNK) for i in tok(text, add_special_tokens=False)["input_ids"]]
            ids = [BOS, *ids[: self.max_length - 2], EOS]
            rows.append(ids + [EOS] * (self.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long)


# -- architecture ---------------------------------------------------------------------------------
# The architecture is the config's model group itself: one definition of the sizes and their defaults.
ToyArch = ToyModelConfig


def build_text_encoder(arch: ToyArch, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=arch.text_width, intermediate_size=4 * arch.text_width,
        num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_heads,
        max_position_embeddings=arch.max_length, projection_dim=arch.text_width,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS,
    )
    model = CLIPTextModel(config)
    # Word embeddings at unit scale (CLIP's 0.02 init left the bag of words, and so colour and position,
    # invisible on the UNet's global path: measured, colour stayed at chance after 1500 steps).
    torch.nn.init.normal_(model.get_input_embeddings().weight, std=1.0)
    return model


def build_unet(arch: ToyArch):
    from diffusers import UNet2DConditionModel

    n = len(arch.block_out_channels)
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // FACTOR,
        in_channels=3 * FACTOR * FACTOR + 2,
        out_channels=3 * FACTOR * FACTOR,
        down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(arch.block_out_channels),
        layers_per_block=arch.layers_per_block,
        norm_num_groups=8,
        cross_attention_dim=arch.text_width,
        attention_head_dim=arch.attention_heads,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=2 * arch.text_width,
        resnet_time_scale_shift="scale_shift",
    )


OBJECTIVES = ("v", "flow")
NUM_TRAIN_TIMESTEPS = 1000


def scheduler_config(objective: str = "v") -> dict[str, Any]:
    """The sampling scheduler's config: DDIM with trailing spacing for v (TOY_NOTES.md), the flow-matching
    Euler scheduler without shift for flow (32 px needs none; SD3 shifts by 3 at 1024 px)."""
    if objective == "flow":
        return {"num_train_timesteps": NUM_TRAIN_TIMESTEPS, "shift": 1.0}
    return {"num_train_timesteps": NUM_TRAIN_TIMESTEPS, "beta_schedule": "squaredcos_cap_v2",
            "prediction_type": "v_prediction", "clip_sample": True, "clip_sample_range": 1.0,
            "timestep_spacing": "trailing"}


def build_scheduler(objective: str = "v") -> Any:
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    if objective not in OBJECTIVES:
        raise MapoBenchError(f"toy objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    cls = FlowMatchEulerDiscreteScheduler if objective == "flow" else DDIMScheduler
    return cls(**scheduler_config(objective))


def scheduler_objective(scheduler: Any) -> str:
    """``flow`` for a flow-matching scheduler, else ``v``."""
    return "flow" if type(scheduler).__name__.startswith("FlowMatch") else "v"


class PretrainingNoise:
    """The pretraining noise process of one objective: ``u`` in [0, 1) -> a noise level ``s = 1 - (1 - u)^bias``
    (> 1 favours high noise), then the noisy input, the denoiser's timestep and its target.

    - v: integer ``t = s * T`` on the cosine DDPM schedule, target v (``DDPMScheduler.get_velocity``).
    - flow: ``sigma = s``, ``x_t = (1 - sigma) x0 + sigma noise``, timestep ``sigma * T`` (as SD3 and the
      ``FlowMatchEulerDiscreteScheduler`` take it), target the velocity ``noise - x0`` (rectified flow,
      Liu et al. 2022; Esser et al. 2024). At equal ``s`` the two schedules have nearly equal SNR
      (cosine: cot^2(pi s / 2); flow: ((1 - s) / s)^2; both 1 at s = 0.5), so one bias serves both.
    """

    def __init__(self, objective: str, bias: float) -> None:
        from diffusers import DDPMScheduler

        self.objective, self.bias = objective, float(bias)
        if objective == "v":
            config = {k: v for k, v in scheduler_config("v").items() if k != "timestep_spacing"}
            self.ddpm = DDPMScheduler(**config)

    def __call__(self, x0: torch.Tensor, noise: torch.Tensor,
                 u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy, timesteps, target) for clean latents ``x0`` ``(B, C, H, W)``, ``noise`` like it, ``u`` ``(B,)``."""
        level = 1 - (1 - u) ** self.bias
        T = NUM_TRAIN_TIMESTEPS
        if self.objective == "flow":
            sigma = level.view(-1, 1, 1, 1)
            return (1 - sigma) * x0 + sigma * noise, sigma.flatten() * T, noise - x0
        t = (level * T).long().clamp(0, T - 1)
        return self.ddpm.add_noise(x0, noise, t), t, self.ddpm.get_velocity(x0, noise, t)


def encode_text(text_encoder: torch.nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Token ids -> ``encoder_hidden_states`` (B, L, W) and ``class_labels`` (B, 2W).

    ``class_labels`` = [pooled end-of-text state, mean of the learned word embeddings of the
    caption's tokens (the bag; zeros for an empty caption)]; it enters the UNet's global path.
    """
    out = text_encoder(input_ids=ids)
    words = text_encoder.get_input_embeddings()(ids)
    mask = (ids >= UNK).unsqueeze(-1).to(words.dtype)
    bag = (words * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return {"encoder_hidden_states": out.last_hidden_state,
            "class_labels": torch.cat([out.pooler_output, bag], dim=-1)}


def unet_forward(unet: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                 conditioning: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model prediction for ``noisy`` latents (coordinates appended here, not by callers)."""
    b, _, h, w = noisy.shape
    coords = coordinate_channels(b, h, w, noisy.device, noisy.dtype)
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(b)
    return unet(torch.cat([noisy, coords], dim=1), timesteps,
                encoder_hidden_states=conditioning["encoder_hidden_states"],
                class_labels=conditioning["class_labels"]).sample


# -- the pipeline ---------------------------------------------------------------------------------
@dataclass
class ToyPipelineOutput:
    images: list[Any]


class ToyPipeline:
    """Text -> 32x32 images, with the call interface of diffusers' SD pipelines.

    Saved as ``unet/``, ``text_encoder/``, ``scheduler/`` (diffusers / transformers layouts) and
    ``toy_pipeline.json`` (toy vocabulary, sizes). ``from_pretrained(folder, unet=..., lora=...)``
    swaps in a fully fine-tuned ``unet/`` folder or applies LoRA weights over the base.
    """

    vae_scale_factor = FACTOR

    def __init__(self, unet: Any, text_encoder: Any, tokenizer: ToyTokenizer, scheduler: Any,
                 arch: ToyArch | None = None) -> None:
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.arch = arch or ToyArch()
        self.progress = False

    # diffusers-like conveniences
    def set_progress_bar_config(self, disable: bool = True, **_: Any) -> None:
        self.progress = not disable

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> ToyPipeline:
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        if kwargs:
            for module in (self.unet, self.text_encoder):
                module.to(**kwargs)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @classmethod
    def build(cls, arch: ToyArch, seed: int = 0, objective: str = "v") -> ToyPipeline:
        """A freshly initialised pipeline (seeded) for ``objective`` (``v`` or ``flow``)."""
        torch.manual_seed(seed)
        tokenizer = ToyTokenizer(build_token_list(), arch.max_length)
        text_encoder = build_text_encoder(arch, tokenizer.vocab_size)
        unet = build_unet(arch)
        return cls(unet, text_encoder, tokenizer, build_scheduler(objective), arch)

    @property
    def objective(self) -> str:
        return scheduler_objective(self.scheduler)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(list(prompts)).to(self.device)
        cond = encode_text(self.text_encoder, ids)
        return {k: v.to(self.dtype) for k, v in cond.items()}

    @torch.no_grad()
    def __call__(self, prompt: list[str] | str, negative_prompt: list[str] | str | None = None,
                 num_inference_steps: int = 15, guidance_scale: float = 2.0, height: int | None = None,
                 width: int | None = None, latents: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, output_type: str = "pil", **_: Any) -> ToyPipelineOutput:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        size = height or IMAGE_SIZE
        if (height or IMAGE_SIZE) != IMAGE_SIZE or (width or IMAGE_SIZE) != IMAGE_SIZE:
            raise MapoBenchError(f"the toy model draws {IMAGE_SIZE}x{IMAGE_SIZE} images; got height={height} width={width}")
        n = len(prompts)
        if latents is None:
            latents = torch.randn((n, 3 * FACTOR * FACTOR, size // FACTOR, size // FACTOR), generator=generator)
        latents = latents.to(self.device, self.dtype)
        cond = self.encode_prompt(prompts)
        use_cfg = guidance_scale != 1.0
        if use_cfg:
            negatives = negative_prompt if negative_prompt is not None else ""
            negatives = [negatives] * n if isinstance(negatives, str) else list(negatives)
            uncond = self.encode_prompt(negatives)
            cond = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            model_in = torch.cat([latents, latents]) if use_cfg else latents
            pred = unet_forward(self.unet, model_in, t.expand(model_in.shape[0]).to(self.device), cond)
            if use_cfg:
                pred_u, pred_c = pred.chunk(2)
                pred = pred_u + guidance_scale * (pred_c - pred_u)
            latents = self.scheduler.step(pred, t, latents).prev_sample
        pixels = latents_to_pixels(latents.float())
        if output_type == "pt":
            return ToyPipelineOutput(images=pixels.clamp(-1, 1))
        return ToyPipelineOutput(images=to_pil(pixels))

    # -- persistence ------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        from mapo_bench.io import write_json_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        unet = self.unet
        if hasattr(unet, "peft_config"):
            raise MapoBenchError("save_pretrained: the UNet carries LoRA adapters; save them with save_lora "
                                 "or merge them (unet.fuse_lora()/unload) first")
        unet.save_pretrained(folder / "unet")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        self.scheduler.save_pretrained(folder / "scheduler")
        write_json_atomic(folder / PIPELINE_FILE, {"class": "ToyPipeline", "format": 1, "arch": self.arch.model_dump(),
                                                   **({"objective": "flow"} if self.objective == "flow" else {}),
                                                   "clip_token_ids": self.tokenizer.clip_ids})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, unet: str | Path | None = None, lora: str | Path | None = None,
                        torch_dtype: torch.dtype = torch.float32, device: str = "cpu") -> ToyPipeline:
        """Load a saved toy pipeline; ``unet`` = a fine-tuned ``unet/`` folder, ``lora`` = LoRA weights."""
        from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel

        from mapo_bench.dtypes import dtype_kwargs

        folder = Path(folder)
        meta_path = folder / PIPELINE_FILE
        if not meta_path.is_file():
            raise MapoBenchError(f"{folder}: not a toy pipeline folder (no {PIPELINE_FILE}); "
                                 "use 'toy' for the shipped base or a folder written by mapo-bench toy pretrain")
        meta = json.loads(meta_path.read_text())
        arch = ToyArch.model_validate(meta["arch"])
        tokenizer = ToyTokenizer(meta["clip_token_ids"], arch.max_length)
        unet_dir = Path(unet) if unet is not None else folder / "unet"
        if not (unet_dir / "config.json").is_file() and (unet_dir / "unet" / "config.json").is_file():
            unet_dir = unet_dir / "unet"
        if not (unet_dir / "config.json").is_file():
            raise MapoBenchError(f"{unet_dir}: no UNet here (expected config.json + diffusion_pytorch_model.safetensors)")
        unet_model = UNet2DConditionModel.from_pretrained(str(unet_dir), **dtype_kwargs(torch_dtype))
        text_encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), dtype=torch_dtype)
        objective = meta.get("objective", "v")
        scheduler_cls = FlowMatchEulerDiscreteScheduler if objective == "flow" else DDIMScheduler
        scheduler = scheduler_cls.from_pretrained(str(folder / "scheduler"))
        pipe = cls(unet_model, text_encoder, tokenizer, scheduler, arch)
        pipe.unet.eval()
        pipe.text_encoder.eval()
        if lora is not None:
            load_lora(pipe.unet, lora)
        return pipe.to(device)


LORA_FILES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")


def lora_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        for name in LORA_FILES:
            if (path / name).is_file():
                return path / name
        raise MapoBenchError(f"{path}: no LoRA weights here (expected one of {', '.join(LORA_FILES)})")
    if not path.is_file():
        raise MapoBenchError(f"{path}: LoRA weights not found")
    return path


def save_lora(unet: Any, folder: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Save the UNet's peft LoRA weights as ``pytorch_lora_weights.safetensors`` (keys ``unet.<peft key>``);
    ``state``: whole tensors to take them from (default: the UNet's own)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = get_peft_model_state_dict(unet, state_dict=state)
    save_file({f"unet.{k}": v.detach().contiguous().cpu() for k, v in layers.items()}, str(folder / LORA_FILES[0]))
    return folder / LORA_FILES[0]


def load_lora(unet: Any, path: str | Path, adapter_name: str = "default") -> None:
    """Apply LoRA weights (a file or folder; keys with or without a ``unet.`` prefix) over ``unet``."""
    from safetensors.torch import load_file

    state = load_file(str(lora_file(path)))
    if any(k.startswith("unet.") for k in state):
        state = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    unet.load_lora_adapter(state, prefix=None, adapter_name=adapter_name)
