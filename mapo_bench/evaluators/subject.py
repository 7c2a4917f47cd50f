"""Subject fidelity (personalization, REFERENCE.md section 7): how much a sample looks like the subject.

DreamBooth (Ruiz et al., CVPR 2023) scores a generated image by the mean cosine similarity of its
embedding to the embeddings of the real subject images: DINO ViT-S/16 (``dino``: the self-supervised
CLS embedding, which separates instances of one class better than CLIP) and CLIP (``clip-i``). Both take
the subject images as the option ``subject_images`` (a folder in the imagefolder convention,
:mod:`mapo_bench.data.imagefolder`); the folder's content digest is part of the metric version, so scores
against another subject never pass for these. ``clip-i`` uses the ViT-L/14 shared with ``clip``,
``aesthetic`` and ``style`` (one forward per image); the DreamBooth paper's own numbers are not
comparable to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mapo_bench.errors import MapoBenchError
from mapo_bench.evaluators.backbones import (
    CONFIG_FILES,
    WEIGHT_FILES,
    ClipBackboneEvaluator,
    clip_backbone,
    resolve_device,
    resolve_folder,
    rgb,
    to_numpy64,
)
from mapo_bench.evaluators.base import Evaluator, ScoreContext, no_options

DINO_VITS16 = "facebook/dino-vits16"
DINO_PROCESSOR_FILES = ("preprocessor_config.json",)


def mean_cosine_to_references(embeds: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """``(N, D), (M, D) -> (N,)``: for each row of ``embeds`` the mean over the M reference rows of the
    cosine similarity (DreamBooth's DINO / CLIP-I, one sample at a time)."""
    a = torch.nn.functional.normalize(embeds.double(), dim=-1)
    b = torch.nn.functional.normalize(references.double(), dim=-1)
    return (a @ b.T).mean(dim=1)


def load_subject(folder: str | Path | None, metric: str, require_prompts: bool = False
                 ) -> tuple[list[Any], str, list[str | None]]:
    """The RGB subject images of ``folder``, a digest of their pixels (for the metric version) and their captions."""
    from mapo_bench.data.imagefolder import folder_digest, read_image_folder

    if folder is None:
        raise MapoBenchError(f"metric {metric!r} needs the subject's images: set its option subject_images=DIR "
                             f"(eval: options: {{{metric}: {{subject_images: DIR}}}})")
    records = read_image_folder(folder, min_images=1, require_prompts=require_prompts).images
    return [record.image for record in records], folder_digest(records)[:16], [record.prompt for record in records]


class SubjectSimilarity(Evaluator):
    """Mean cosine of a sample's embedding to the subject images' (in [-1, 1]); subclasses define ``embeds``."""

    reads_subject: ClassVar[bool] = True

    def __init__(self, subject: list[Any], digest: str, label: str) -> None:
        self.references = self.embeds(subject)
        self.version = f"{label}:{digest}"

    def embeds(self, images: list[Any]) -> torch.Tensor:
        """``(N, D)`` float32 embeddings of ``images``."""
        raise NotImplementedError

    def score(self, images: list[Any], prompts: list[str], context: ScoreContext | None = None) -> np.ndarray:
        return to_numpy64(mean_cosine_to_references(self.embeds(images), self.references))


class ClipImageSimilarity(ClipBackboneEvaluator, SubjectSimilarity):
    """``clip-i``: on the CLIP image embedding shared with clip / aesthetic / style."""

    name: ClassVar[str] = "clip-i"

    def __init__(self, backbone: Any, subject: list[Any], digest: str) -> None:
        ClipBackboneEvaluator.__init__(self, backbone)
        SubjectSimilarity.__init__(self, subject, digest, "vit-l-14")

    @classmethod
    def load(cls, device: str = "cpu", dtype: str = "float32", model: str | None = None,
             subject_images: str | Path | None = None, **options: Any) -> ClipImageSimilarity:
        no_options(cls.name, options)
        subject, digest, _ = load_subject(subject_images, cls.name)
        return cls(clip_backbone(model or cls.default_model, device, dtype, None), subject, digest)

    def embeds(self, images: list[Any]) -> torch.Tensor:
        return self.backbone.image_embeds(images)


class DinoSimilarity(SubjectSimilarity):
    """``dino``: on DINO's CLS embedding (ViT-S/16 by default)."""

    name: ClassVar[str] = "dino"

    def __init__(self, model: Any, processor: Any, device: torch.device, subject: list[Any], digest: str,
                 model_id: str) -> None:
        self.model, self.processor, self.device = model, processor, device
        super().__init__(subject, digest, Path(model_id.rstrip("/")).name)

    @classmethod
    def load(cls, device: str = "cpu", dtype: str = "float32", model: str | None = None,
             subject_images: str | Path | None = None, **options: Any) -> DinoSimilarity:
        from transformers import ViTImageProcessor, ViTModel

        from mapo_bench.dtypes import resolve_dtype

        no_options(cls.name, options)
        subject, digest, _ = load_subject(subject_images, cls.name)
        model_id = model or DINO_VITS16
        path = resolve_folder(model_id, CONFIG_FILES + DINO_PROCESSOR_FILES, either=WEIGHT_FILES)
        torch_device = resolve_device(str(device) if device is not None else None)
        vit = ViTModel.from_pretrained(str(path), torch_dtype=resolve_dtype(dtype), add_pooling_layer=False)
        vit.to(torch_device).eval()
        return cls(vit, ViTImageProcessor.from_pretrained(str(path)), torch_device, subject, digest, model_id)

    @torch.no_grad()
    def embeds(self, images: list[Any]) -> torch.Tensor:
        """``(N, D)`` float32 CLS embeddings of the last layer (DINO's image representation)."""
        pixels = self.processor(images=rgb(images), return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, next(self.model.parameters()).dtype)
        return self.model(pixel_values=pixels).last_hidden_state[:, 0].float().cpu()



LOW_FREQUENCY_RADIUS = 8  # cycles per image: below it lie the object's outline, shading and background
PEAK_BINS = 8
PEAK_FLOOR = 0.05  # a peak holds at least this share of the strongest bin's power (not the rounding noise)


def frequency_radius(height: int, width: int) -> np.ndarray:
    """``(H, W)``: each FFT bin's frequency radius in cycles per image."""
    fy = np.fft.fftfreq(height) * height
    fx = np.fft.fftfreq(width) * width
    return np.hypot(*np.meshgrid(fy, fx, indexing="ij"))


def highpass_power(images: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 images -> ``(N, H, W)`` power spectra of their grey level (mean of the
    channels, in [0, 1]) with every frequency below ``LOW_FREQUENCY_RADIUS`` cycles per image set to 0.
    ``weights`` ``(N, H, W)`` in [0, 1] (None: every pixel 1) window the grey level, less its weighted mean,
    before the transform, so only the weighted region's texture counts. The power spectrum does not depend on
    where a texture sits, so it reads a pattern wherever in the window the object is drawn."""
    grey = np.asarray(images, dtype=np.float64).mean(axis=-1) / 255.0
    if weights is None:
        weights = np.ones_like(grey)
    total = np.maximum(weights.sum(axis=(1, 2), keepdims=True), 1e-12)
    windowed = (grey - (grey * weights).sum(axis=(1, 2), keepdims=True) / total) * weights
    power = np.abs(np.fft.fft2(windowed)) ** 2
    return power * (frequency_radius(*grey.shape[1:]) >= LOW_FREQUENCY_RADIUS)


def subject_peaks(power: np.ndarray, k: int = PEAK_BINS) -> np.ndarray:
    """``(N, H, W) -> (<= k,)``: the flat indices of the ``k`` high-frequency bins with the most mean power over
    the subject images, keeping those with at least ``PEAK_FLOOR`` of the strongest one's (ties: the lower
    index)."""
    mean = power.reshape(len(power), -1).mean(axis=0)
    top = np.argsort(-mean, kind="stable")[:k]
    return np.sort(top[mean[top] >= PEAK_FLOOR * mean[top[0]]])


def ring_contrast(power: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """``(N, H, W), (K,) -> (N,)``: the sum over ``bins`` of each spectrum's power there minus its mean power
    over the high-frequency bins of the same radius (rounded to a whole cycle per image). Noise spreads its
    power evenly over a ring and the outlines of untextured objects mostly along the axes, so neither
    raises it; a texture of the subject's frequency and orientation does."""
    height, width = power.shape[1:]
    radius = frequency_radius(height, width).reshape(-1)
    ring = np.rint(radius).astype(int)
    band = radius >= LOW_FREQUENCY_RADIUS
    flat = power.reshape(len(power), -1)
    contrast = np.zeros(len(power))
    for b in bins:
        contrast += flat[:, b] - flat[:, band & (ring == ring[b])].mean(axis=1)
    return contrast


def as_array(images: list[Any]) -> np.ndarray:
    return np.stack([np.asarray(image.convert("RGB")) for image in images])


class ToySubjectSimilarity(Evaluator):
    """``toy-subject``: the toy analogue of ``dino`` / ``clip-i`` for the toy world's subject and concepts,
    whose identity is a texture on the object (``toy.vocab.PATTERNS``). A fixed rule, no learned embedding: each
    image's object is found from its caption (``toy.locate``: the renderer's geometry fitted to the pixels) and
    only its inside is read; the score is the ring contrast (:func:`ring_contrast`) of that window at the
    high-frequency bins where the subject images hold the most power, divided by the subject images' mean
    contrast there. 1 for the subject's own renders, about 0 for untextured objects, for noise and for the
    subject's texture drawn on the background; numbers measured on renders and samples in docs/datasets.md."""

    name: ClassVar[str] = "toy-subject"
    reads_subject: ClassVar[bool] = True

    def __init__(self, subject: list[Any], subject_prompts: list[str], digest: str) -> None:
        power = object_power(as_array(subject), subject_prompts)
        if not power.any():
            raise MapoBenchError("toy-subject: the subject images hold no high-frequency texture to compare with")
        self.bins = subject_peaks(power)
        self.reference = float(ring_contrast(power, self.bins).mean())
        if self.reference <= 0:
            raise MapoBenchError("toy-subject: the subject images hold no high-frequency texture to compare with")
        self.version = f"object-contrast-{LOW_FREQUENCY_RADIUS}-{PEAK_BINS}:{digest}"

    @classmethod
    def load(cls, device: str = "cpu", dtype: str = "float32", model: str | None = None,
             subject_images: str | Path | None = None, **options: Any) -> ToySubjectSimilarity:
        no_options(cls.name, options)
        subject, digest, prompts = load_subject(subject_images, cls.name, require_prompts=True)
        return cls(subject, [str(p) for p in prompts], digest)

    def score(self, images: list[Any], prompts: list[str], context: ScoreContext | None = None) -> np.ndarray:
        if not images:
            return np.zeros(0)
        return ring_contrast(object_power(as_array(images), prompts), self.bins) / self.reference


def object_power(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """:func:`highpass_power` of each image windowed to its caption's object (:func:`toy.locate.object_weights`);
    a caption the toy grammar cannot read is a one-line error naming it."""
    from mapo_bench.toy.locate import object_weights

    if len(prompts) != len(images):
        raise MapoBenchError(f"toy-subject: {len(images)} images but {len(prompts)} captions")
    try:
        weights = object_weights(images, prompts)
    except ValueError as exc:
        raise MapoBenchError(f"toy-subject reads toy captions to find the object: {exc}") from None
    return highpass_power(images, weights)
