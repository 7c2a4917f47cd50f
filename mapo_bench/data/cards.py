"""The dataset card (README.md): HF YAML front matter from the real counts + prose from data_cards/<task>.md.

``datasets.load_dataset(FOLDER)`` reads the front matter: ``configs`` points it at ``data/train-*`` and
``dataset_info.splits`` must hold the true row count, or the load fails its split check. So the card is
rendered after the shards are complete, from what was actually written.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import yaml

from mapo_bench.data.schema import DATA_SUBDIR, hf_features
from mapo_bench.data.tasks import Task

LICENSES = {"sdxl": "openrail++", "sd15": "creativeml-openrail-m", "toy": "apache-2.0", "toy-flow": "apache-2.0"}
LICENSE_TEXT = {
    "openrail++": "Images were generated with an SDXL model; they inherit its CreativeML Open RAIL++-M license "
                  "(use restrictions apply). Check the license of the exact model recorded in `model_id`.",
    "creativeml-openrail-m": "Images were generated with a Stable Diffusion 1.x model; they inherit its "
                             "CreativeML Open RAIL-M license (use restrictions apply).",
    "apache-2.0": "Images come from mapo-bench's embedded toy world (Apache-2.0).",
}


def templates_dir() -> Path:
    """``data_cards/`` of the checkout (the package's parent folder)."""
    return Path(__file__).resolve().parents[2] / "data_cards"


# Used when data_cards/ is not beside the package (an installed wheel ships only the package).
FALLBACK_TEMPLATE = """# ${title}

${content_line}${summary}

${provenance}

| | prompt |
|---|---|
| chosen | `${chosen_template}` |
| rejected | `${rejected_template}` |

- ${num_pairs} pairs from ${num_prompts} distinct prompts (`${prompt_source}`), ${num_shards} parquet shard(s), one `train` split
- images: ${image_format}, ${resolution}; sampler: ${sampler}; seed ${seed}; config hash `${config_hash}`
${model_notes}

Columns: `caption`, `jpg_0`, `jpg_1`, `label_0`, `label_1` (float64; 1 = preferred) plus provenance `prompt_0`,
`prompt_1`, `seed`, `model_id`, `task`, `pair_id`, `sampler`. `manifest.json` holds the full config
(`mapo-bench build-dataset ${task} --config build.yaml` rebuilds it).

${license_text}
"""


def _template(task_name: str) -> str:
    """``data_cards/<task>.md`` (``custom.md`` for tasks without their own), else the fallback."""
    for name in (task_name, "custom"):
        path = templates_dir() / f"{name}.md"
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return FALLBACK_TEMPLATE


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def front_matter(task: Task, backend: str, num_rows: int, num_bytes: int, file_bytes: int) -> dict[str, Any]:
    """The YAML header: license, tags, data files and the split size ``load_dataset`` checks."""
    info = task.card()
    tags = list(dict.fromkeys([*info.tags, backend, "synthetic"]))
    return {
        "license": LICENSES.get(backend, "other"),
        "pretty_name": info.title,
        "task_categories": ["text-to-image"],
        "tags": tags,
        "size_categories": [size_category(num_rows)],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": f"{DATA_SUBDIR}/train-*"}]}],
        "dataset_info": {
            "features": hf_features(),
            "splits": [{"name": "train", "num_bytes": int(num_bytes), "num_examples": int(num_rows)}],
            "download_size": int(file_bytes),
            "dataset_size": int(num_bytes),
        },
    }


def render_card(task: Task, manifest: dict[str, Any]) -> str:
    """README.md text for a finished build described by ``manifest`` (counts: pairs, bytes, file_bytes)."""
    config = manifest["config"]
    counts = manifest["counts"]
    num_rows = counts["pairs"]
    backend = config["backend"]
    info = task.card()
    context = task.score_context()
    template = _template(task.name)
    sampler = manifest.get("sampler") or {}
    resolution = manifest.get("resolution")
    license_id = LICENSES.get(backend, "other")
    rendered = config.get("pairs") == "rendered"
    values = {
        "title": info.title, "summary": info.summary, "content_warning": info.content_warning or "",
        "content_line": f"> **Content warning.** {info.content_warning}\n\n" if info.content_warning else "",
        "backend": backend, "model_id": manifest.get("model_id", ""), "chosen_template": info.chosen_template,
        "rejected_template": info.rejected_template, "num_pairs": num_rows,
        "num_prompts": manifest["counts"].get("prompts", ""), "prompt_source": config["prompts"],
        "pairs_per_prompt": config["pairs_per_prompt"], "num_shards": manifest["counts"].get("shards", ""),
        "image_format": config["image_format"],
        "resolution": f"{resolution[0]}x{resolution[1]} px" if resolution else "see images",
        "sampler": "none (renderer)" if rendered else json.dumps(sampler, sort_keys=True),
        "provenance": _provenance(config, manifest.get("model_id", ""), rendered), "seed": config["seed"], "config_hash": manifest["config_hash"],
        "model_notes": _model_notes(manifest), "task": config["task"],
        "target_style": context.target_style or "-", "base_style": context.base_style or "-",
        "license_text": LICENSE_TEXT.get(license_id, "See the generating model's license."),
    }
    body = string.Template(template).substitute(values)
    header = yaml.safe_dump(front_matter(task, backend, num_rows, counts["bytes"], counts["file_bytes"]), sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n\n{body}"


def _model_notes(manifest: dict[str, Any]) -> str:
    """Lines about the generating model: a disabled safety checker, a toy base's gate verdict."""
    from mapo_bench.toy.gate import gate_line

    return "\n".join(filter(None, (_safety_line(manifest), gate_line(manifest.get("backend") or {}, "- "))))


def _safety_line(manifest: dict[str, Any]) -> str:
    record = manifest.get("backend") or {}
    if record.get("safety_checker") == "disabled":
        return ("- the SD safety checker was disabled while building (it would black out unsafe images); "
                "recorded in manifest.json")
    return ""


def _provenance(config: dict[str, Any], model_id: str, rendered: bool) -> str:
    if rendered:
        return ("Built with mapo-bench `build-dataset` from the toy world's procedural renderer: control pairs, "
                "not model samples. Both images of a pair show the same scene (seeded by the caption and the "
                "pair's seed) drawn in the styles the two prompts name.")
    return (f"Built with mapo-bench `build-dataset` from a {config['backend']} model (`{model_id}`), the way the MaPO "
            "paper (arXiv 2406.06424) built its sets: for each plain caption two images are generated from the "
            "same initial noise, with prompts that differ only by a prefix.")
