"""A real CLIP BPE tokenizer with no hub access.

open_clip ships the CLIP byte-pair vocabulary (``bpe_simple_vocab_16e6.txt.gz``). We find that file
without importing open_clip (which imports torchvision), convert it once to the ``vocab.json`` /
``merges.txt`` layout of transformers' ``CLIPTokenizer`` (identical ids to
``openai/clip-vit-large-patch14``), and cache the folder.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from mapo_bench.errors import MapoBenchError

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # as in CLIP's SimpleTokenizer
VOCAB_SIZE = 49408


def cache_root() -> Path:
    """User cache folder of mapo-bench ($MAPO_BENCH_CACHE or ~/.cache/mapo_bench)."""
    root = os.environ.get("MAPO_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mapo_bench"
    )
    return Path(root)


def bpe_vocab_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise MapoBenchError("open_clip_torch is not installed; it ships the CLIP vocabulary (pip install open_clip_torch)")
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_FILE
    if not path.is_file():
        raise MapoBenchError(f"{path}: CLIP vocabulary missing from the open_clip_torch install")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def write_tokenizer_files(folder: Path) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs of a CLIP tokenizer into ``folder``."""
    from mapo_bench.io import write_json_atomic, write_text_atomic

    lines = gzip.open(bpe_vocab_path(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != VOCAB_SIZE:
        raise MapoBenchError(f"{bpe_vocab_path()}: expected {VOCAB_SIZE} tokens, built {len(vocab)}")
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "merges.txt", "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    write_json_atomic(folder / "vocab.json", {tok: i for i, tok in enumerate(vocab)})
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    write_json_atomic(folder / "special_tokens_map.json", special)
    write_json_atomic(folder / "tokenizer_config.json",
                      {**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"})
    return folder


@lru_cache(maxsize=1)
def tokenizer_dir() -> Path:
    """The cached tokenizer folder, built on first use."""
    folder = cache_root() / "clip-tokenizer"
    if not (folder / "tokenizer_config.json").is_file():
        write_tokenizer_files(folder)
    return folder


def load_clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A transformers ``CLIPTokenizer`` built from open_clip's vocabulary (SDXL's tokenizer_2 pads with '!')."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(tokenizer_dir()), pad_token=pad_token)
