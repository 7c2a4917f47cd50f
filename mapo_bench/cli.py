"""The ``mapo-bench`` command line: parsing only. Every command calls one function of ``mapo_bench.api``.

Flags that duplicate a config key (--method, --metrics, --model, --dataset, --out, ...) are sugar for a
``key=value`` override. Bad input prints one line and exits with code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

BACKEND_HELP = "sdxl | sd15 | sd3 | flux | toy | toy-flow (mapo-bench ls backends)"

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Preference alignment of text-to-image diffusion models: MaPO vs Diffusion-DPO under reference mismatch.",
                  context_settings={"help_option_names": ["-h", "--help"]})
toy_app = typer.Typer(no_args_is_help=True, help="The embedded toy world.")
config_app = typer.Typer(no_args_is_help=True, help="Check or print a config file.")
cache_app = typer.Typer(no_args_is_help=True, help="The user cache (toy bases, tokenizer, training caches).")
app.add_typer(toy_app, name="toy")
app.add_typer(config_app, name="config")
app.add_typer(cache_app, name="cache")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (a recipe).")]
Overrides = Annotated[list[str] | None, typer.Argument(help="key.path=value overrides, applied last.")]
RunDirArg = Annotated[Path, typer.Argument(help="a run folder of `mapo-bench run` (its report written)")]
PairsOpt = Annotated[str, typer.Option(help="model pairs, gallery column names: mapo:dpo,mapo:base")]
DatasetsOpt = Annotated[str | None, typer.Option(help="comma-separated datasets (default: all)")]


def _sugar(overrides: list[str] | None, **flags: object) -> list[str]:
    """Turn flags that mirror config keys into overrides placed before the explicit ones."""
    items = [f"{key}={value}" for key, value in flags.items() if value is not None]
    return items + list(overrides or [])


def _quoted(text: str | None) -> str | None:
    """A free-text flag as a YAML string, so "a photo: x" is not read as a mapping."""
    import json

    return json.dumps(text) if text is not None else None


def _print_path(label: str, path: object) -> None:
    """Print a stage's output path once (on the main process under accelerate or torchrun)."""
    import os

    if os.environ.get("RANK", "0") != "0":
        return
    from rich.console import Console

    Console().print(f"[green]{label}[/green] {path}")


@app.command("build-dataset")
def build_dataset(
    task: Annotated[str, typer.Argument(help="pick-style | pick-safety | custom | from-images")],
    overrides: Overrides = None,
    config: ConfigOpt = None,
    split: Annotated[str | None, typer.Option(help="pick-style split: cartoon | pixel-art")] = None,
    backend: Annotated[str | None, typer.Option(help=BACKEND_HELP)] = None,
    model: Annotated[str | None, typer.Option(help="hub id or local path")] = None,
    prompts: Annotated[str | None, typer.Option(help="built-in set, file, or hf://NAME:SPLIT:COLUMN")] = None,
    num_prompts: Annotated[int | None, typer.Option(help="how many prompts to use")] = None,
    seed: Annotated[int | None, typer.Option(help="global seed")] = None,
    chosen_prefix: Annotated[str | None, typer.Option(help="custom task: chosen prefix")] = None,
    rejected_prefix: Annotated[str | None, typer.Option(help="custom task: rejected prefix")] = None,
    pairs_per_prompt: Annotated[int | None, typer.Option(help="pairs per prompt (each has its own seed)")] = None,
    rejected_variant: Annotated[str | None, typer.Option(help="pick-style rejected prompt: realistic-8k | plain")] = None,
    severity: Annotated[float | None, typer.Option(help="toy: blend level of the chosen style, (0, 1]")] = None,
    pairs: Annotated[str | None, typer.Option(help="toy: generated | rendered (renderer control pairs)")] = None,
    images: Annotated[Path | None, typer.Option(help="from-images: folder of chosen images (imagefolder layout)")] = None,
    token: Annotated[str | None, typer.Option(help="from-images: rare token naming the subject, e.g. sks")] = None,
    subject_class: Annotated[str | None, typer.Option("--class", help="from-images: the subject's class, e.g. dog")] = None,
    vae: Annotated[str | None, typer.Option(help="VAE override: hub id or local path")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32 | float16 | bfloat16")] = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda")] = None,
    batch_size: Annotated[int | None, typer.Option(help="pairs per generate call")] = None,
    image_format: Annotated[str | None, typer.Option(help="png | jpeg")] = None,
    out: Annotated[Path | None, typer.Option(help="dataset folder to write")] = None,
    overwrite: Annotated[bool, typer.Option(help="start over instead of resuming")] = False,
) -> None:
    """Build a preference-pair dataset by prefix-prompting a model.

    Example: mapo-bench build-dataset pick-style --split cartoon --backend toy --num-prompts 50 --out data/cartoon
    """
    from mapo_bench import api

    items = _sugar(overrides, task=task, split=split, backend=backend, model=model, prompts=prompts,
                   num_prompts=num_prompts, seed=seed, chosen_prefix=chosen_prefix,
                   rejected_prefix=rejected_prefix, pairs_per_prompt=pairs_per_prompt,
                   rejected_variant=rejected_variant, severity=severity, pairs=pairs, images=images, token=token,
                   subject_class=subject_class, vae=vae, dtype=dtype,
                   device=device, batch_size=batch_size, image_format=image_format, out=out,
                   overwrite=overwrite or None)
    _print_path("dataset:", api.build_dataset(config, items))


@app.command("validate-dataset")
def validate_dataset(path: Annotated[Path, typer.Argument(help="dataset folder or parquet file")]) -> None:
    """Report schema errors, undecodable images, label problems, ties and duplicates, with row numbers.

    Example: mapo-bench validate-dataset data/cartoon
    """
    from mapo_bench import api

    report = api.validate_dataset(path)
    typer.echo(json.dumps(report, indent=2, default=str))
    if report.get("errors"):
        raise typer.Exit(2)


@app.command()
def verify(path: Annotated[Path, typer.Argument(help="a run, dataset, model, sample or score folder")]) -> None:
    """Re-hash every file the manifests under PATH recorded; list what changed; exit 1 if anything did.

    Example: mapo-bench verify runs/toy-quick
    """
    from mapo_bench.integrity import verify as verify_folder

    report = verify_folder(path)
    for line in report.problems:
        typer.echo(line)
    typer.echo(f"{path}: {report.manifests} manifest(s), {report.files} recorded file(s), "
               f"{len(report.problems)} problem(s)")
    if report.problems:
        raise typer.Exit(1)


@app.command()
def train(
    overrides: Overrides = None,
    config: ConfigOpt = None,
    method: Annotated[str | None, typer.Option(help="mapo | dpo | sft")] = None,
    dataset: Annotated[str | None, typer.Option(help="dataset folder or hub id")] = None,
    model: Annotated[str | None, typer.Option(help="base model: hub id or local path")] = None,
    backend: Annotated[str | None, typer.Option(help=BACKEND_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="output folder")] = None,
    resume: Annotated[str | None, typer.Option(help="latest (default) | none | PATH to a checkpoints/step-N folder")] = None,
) -> None:
    """Fine-tune with MaPO, Diffusion-DPO or SFT (one loop; full or LoRA; accelerate).

    Example: mapo-bench train --method mapo --config recipes/train/toy_mapo.yaml --dataset data/cartoon --out models/mapo
    """
    from mapo_bench import api

    items = _sugar(overrides, method=method, dataset=dataset, model=model, backend=backend, out=out, resume=resume)
    _print_path("model:", api.train(config, items))


@app.command()
def sample(
    overrides: Overrides = None,
    config: ConfigOpt = None,
    model: Annotated[str | None, typer.Option(help="base model: hub id or local path")] = None,
    backend: Annotated[str | None, typer.Option(help=BACKEND_HELP)] = None,
    unet: Annotated[str | None, typer.Option(help="fine-tuned UNet folder")] = None,
    lora: Annotated[str | None, typer.Option(help="LoRA folder")] = None,
    prompts: Annotated[str | None, typer.Option(help="prompt set or file")] = None,
    seeds: Annotated[str | None, typer.Option(help="comma-separated seeds, e.g. 0,1")] = None,
    out: Annotated[Path | None, typer.Option(help="image folder")] = None,
) -> None:
    """Generate evaluation images: same prompts, seeds and sampler for every model.

    Example: mapo-bench sample --backend toy --prompts toy:test --seeds 0,1 --out samples/base
    """
    from mapo_bench import api

    seed_list = f"[{seeds}]" if seeds else None
    items = _sugar(overrides, model=model, backend=backend, unet=unet, lora=lora, prompts=prompts,
                   seeds=seed_list, out=out)
    _print_path("samples:", api.sample(config, items))


@app.command("eval")
def evaluate(
    overrides: Overrides = None,
    config: ConfigOpt = None,
    metrics: Annotated[str | None, typer.Option(help="comma-separated, e.g. pickscore,aesthetic")] = None,
    images: Annotated[list[Path] | None, typer.Option(help="sample folder(s) from `mapo-bench sample`")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder for scores.parquet")] = None,
    task: Annotated[str | None, typer.Option(help="task the images answer (recorded)")] = None,
    target_style: Annotated[str | None, typer.Option(help="style / toy-style: target style text or toy style")] = None,
    base_style: Annotated[str | None, typer.Option(help="style: the base style text it is compared with")] = None,
) -> None:
    """Score images; writes scores.parquet (one row per image and metric) and a summary table.

    Example: mapo-bench eval --metrics pickscore,aesthetic --images samples/base --out scores/base
    """
    from mapo_bench import api

    metric_list = f"[{metrics}]" if metrics else None
    image_list = "[" + ",".join(str(p) for p in images) + "]" if images else None
    items = _sugar(overrides, metrics=metric_list, images=image_list, out=out, task=task,
                   target_style=_quoted(target_style), base_style=_quoted(base_style))
    _print_path("scores:", api.evaluate(config, items))


@app.command()
def compare(
    scores_a: Annotated[Path, typer.Argument(help="scores.parquet (or folder) of model A")],
    scores_b: Annotated[Path | None, typer.Argument(help="scores of model B (omit if A holds both)")] = None,
    model_a: Annotated[str | None, typer.Option(help="model name of A inside the scores")] = None,
    model_b: Annotated[str | None, typer.Option(help="model name of B inside the scores")] = None,
    resamples: Annotated[int, typer.Option(help="bootstrap resamples")] = 1000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    tie_margin: Annotated[list[str] | None, typer.Option(help="METRIC=MARGIN: gaps within it are win-rate ties")] = None,
) -> None:
    """Per metric: the mean gap of A over B (effect size, the metric's direction read from the scores) with
    a paired bootstrap 95% CI, then the win rate with its CI and a sign test over prompts.

    Example: mapo-bench compare scores/mapo scores/base --tie-margin toy-content=0.01
    """
    from mapo_bench import api
    from mapo_bench.config import parse_value

    margins = {}
    for item in tie_margin or []:
        metric, sep, value = item.partition("=")
        if not sep or not isinstance(parse_value(value), (int, float)):
            raise typer.BadParameter(f"--tie-margin {item!r}: expected METRIC=NUMBER, e.g. toy-content=0.01")
        margins[metric] = float(parse_value(value))
    result = api.compare(scores_a, scores_b, model_a=model_a, model_b=model_b, resamples=resamples, seed=seed,
                         tie_margins=margins)
    typer.echo(result if isinstance(result, str) else json.dumps(result, indent=2, default=str))


@app.command()
def mismatch(
    overrides: Overrides = None,
    config: ConfigOpt = None,
    dataset: Annotated[str | None, typer.Option(help="dataset folder")] = None,
    reference: Annotated[str | None, typer.Option(help="reference model: hub id or path")] = None,
    backend: Annotated[str | None, typer.Option(help=BACKEND_HELP)] = None,
) -> None:
    """Measure reference-mismatch severity of a dataset (prefix excess, MMD/KID, FD, pair accuracy).

    Example: mapo-bench mismatch --dataset data/cartoon --backend toy
    """
    from mapo_bench import api

    items = _sugar(overrides, dataset=dataset, reference=reference, backend=backend)
    _print_path("severity:", api.measure_mismatch(config, items))


def _print_answer(report_dir: Path) -> None:
    """The run's answer (table, verdicts, page and plot paths) on the main process."""
    import os

    if os.environ.get("RANK", "0") == "0":
        from mapo_bench.report_console import print_answer

        print_answer(report_dir)


@app.command()
def run(
    pipeline: Annotated[Path, typer.Argument(help="experiment spec, e.g. pipelines/toy-quick.yaml")],
    overrides: Overrides = None,
    workers: Annotated[int, typer.Option(help="local worker processes for independent jobs")] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan with estimated costs")] = False,
    emit_commands: Annotated[bool, typer.Option("--emit-commands", help="print each job as a CLI command")] = False,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/<pipeline name>)")] = None,
    job: Annotated[str | None, typer.Option(help="run only this job (an id printed by --emit-commands)")] = None,
    executor: Annotated[str, typer.Option(help="where jobs run: local (process pool) | ray | slurm (submitit)")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="--executor ray: an existing cluster (default: start one)")] = None,
) -> None:
    """Run a whole experiment: build, mismatch, train, sample, eval, report; resumable.

    Under torchrun / accelerate launch every process shares each job (use --workers 1). With --executor ray
    or slurm the same plan, markers and resume; the pipeline's `resources:` block sizes the jobs.

    Example: mapo-bench run pipelines/toy-quick.yaml --workers 2
    """
    from mapo_bench import api

    result = api.run(pipeline, overrides or [], workers=workers, dry_run=dry_run, emit_commands=emit_commands,
                     out=out, job=job, executor=executor, ray_address=ray_address)
    if result is not None:
        _print_answer(result)
        _print_path("run:", result)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run folder of `mapo-bench run`")],
    publish: Annotated[Path | None, typer.Option(help="also copy the report here (e.g. docs/results/NAME)")] = None,
    readme: Annotated[Path | None, typer.Option(help="with --publish: rewrite this file's results section")] = None,
) -> None:
    """Render results.json, table.md/csv and plots of a run folder.

    Example: mapo-bench report runs/toy-mismatch --publish docs/results/toy-mismatch --readme README.md
    """
    from mapo_bench import api

    folder = api.report(run_dir)
    _print_answer(folder)
    _print_path("report:", folder)
    if publish is not None:
        from mapo_bench.report import publish as publish_report

        _print_path("published:", publish_report(run_dir, publish, readme))


@app.command()
def serve(
    run_dir: RunDirArg,
    pairs: Annotated[str | None, typer.Option(help="model pairs to rate, gallery column names: mapo:dpo,mapo:base "
                                                   "(default: the pipeline's rating.pairs)")] = None,
    per_rater: Annotated[int | None, typer.Option(help="votes asked of each rater (default: rating.per_rater)")] = None,
    datasets: DatasetsOpt = None,
    host: Annotated[str, typer.Option(help="bind address (anything but localhost warns)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8765,
) -> None:
    """Serve the run's report and a pairwise rating page; votes go to RUN_DIR/votes.sqlite.

    Example: mapo-bench serve runs/toy-quick --pairs mapo:dpo,mapo:base --per-rater 20
    """
    from mapo_bench.serve import rating_defaults
    from mapo_bench.serve import serve as serve_run
    from mapo_bench.votes import parse_comparisons

    default_pairs, default_per_rater = rating_defaults(run_dir)
    serve_run(run_dir, parse_comparisons(pairs or default_pairs), per_rater=per_rater or default_per_rater,
              host=host, port=port, datasets=_datasets(datasets))


def _datasets(datasets: str | None) -> list[str] | None:
    return [d.strip() for d in datasets.split(",") if d.strip()] if datasets else None


@app.command("export-pairs")
def export_pairs(
    run_dir: RunDirArg,
    out: Annotated[Path, typer.Option(help="folder to write: pairs.csv and the images under anonymous names")],
    pairs: PairsOpt = "mapo:dpo",
    datasets: DatasetsOpt = None,
) -> None:
    """Write anonymised rating pairs (pairs.csv: pair_id, prompt, seed, left and right image) for an outside service.

    Example: mapo-bench export-pairs runs/toy-quick --pairs mapo:dpo --out rating-export
    """
    from mapo_bench.votes import export_pairs as export
    from mapo_bench.votes import parse_comparisons

    _print_path("pairs:", export(run_dir, parse_comparisons(pairs), out, _datasets(datasets)))


@app.command("import-votes")
def import_votes(
    run_dir: RunDirArg,
    votes: Annotated[Path, typer.Argument(help="CSV with rater, pair_id, choice (left | right | tie)")],
    pairs: PairsOpt = "mapo:dpo",
    datasets: DatasetsOpt = None,
) -> None:
    """Add votes collected outside the app to RUN_DIR/votes.sqlite (then `mapo-bench report RUN_DIR`).

    Example: mapo-bench import-votes runs/toy-quick rated.csv --pairs mapo:dpo
    """
    from mapo_bench.votes import import_votes as import_csv
    from mapo_bench.votes import parse_comparisons

    new = import_csv(run_dir, parse_comparisons(pairs), votes, _datasets(datasets))
    _print_path("votes:", f"{new} new vote(s) in {Path(run_dir) / 'votes.sqlite'}")


@toy_app.command("pretrain")
def toy_pretrain(
    overrides: Overrides = None,
    config: ConfigOpt = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default: the user cache)")] = None,
) -> None:
    """Pretrain the toy base model and the toy evaluators (seeded; reproduces the shipped weights).

    Example: mapo-bench toy pretrain --config recipes/toy/pretrain.yaml
    """
    from mapo_bench import api

    _print_path("toy assets:", api.toy_pretrain(config, _sugar(overrides, out=out)))


@toy_app.command("images")
def toy_images(
    word: Annotated[str, typer.Argument(help="sks (a subject) or striped | dotted | checkered (a concept)")],
    out: Annotated[Path, typer.Option(help="folder: images/ plus validation.txt and test.txt")],
    concept: Annotated[bool, typer.Option(help="a concept on every shape and colour, not one subject")] = False,
    colour: Annotated[str, typer.Option(help="subject: its colour")] = "yellow",
    shape: Annotated[str, typer.Option(help="subject: its class (a toy shape)")] = "square",
    count: Annotated[int, typer.Option(help="concept: how many images")] = 12,
    seeds_per_context: Annotated[int, typer.Option(help="subject: renders per size and position")] = 2,
) -> None:
    """Render a toy subject or concept as an image folder for `build-dataset from-images`, with its
    evaluation prompts (a subject: new colours and styles; a concept: held-out combinations).

    Example: mapo-bench toy images sks --out examples/toy-subject-sks
    """
    from mapo_bench.toy.images import write_example

    _print_path("toy images:", write_example(out, word, concept=concept, colour=colour, shape=shape, count=count,
                                             seeds_per_context=seeds_per_context))


@toy_app.command("instrument")
def toy_instrument(
    model: Annotated[str | None, typer.Option(help="toy base or classifier folder (default: the shipped one)")] = None,
    seeds_per_caption: Annotated[int, typer.Option(help="renders per caption and group")] = 2,
) -> None:
    """The fidelity instrument (toy-content) on renders of every caption in every style and blend level,
    printed as a markdown table: a correct object should score alike in every style.

    Example: mapo-bench toy instrument
    """
    from mapo_bench.toy.gate import content_on_renders

    table = content_on_renders(model, seeds_per_caption=seeds_per_caption)
    typer.echo("| group | toy-content mean | min | renders |\n|---|---|---|---|")
    for name, row in table.items():
        typer.echo(f"| {name} | {row['mean']:.3f} | {row['min']:.3f} | {row['n']} |")


@app.command("ls")
def list_things(
    what: Annotated[str, typer.Argument(help="tasks | backends | methods | evaluators | recipes | pipelines")],
) -> None:
    """List registered names (or recipe and pipeline files) with a one-line description.

    Example: mapo-bench ls evaluators
    """
    from mapo_bench.errors import MapoBenchError
    from mapo_bench.registry import ALL, suggest

    if what in ALL:
        registry = ALL[what]
        for name in registry.names():
            typer.echo(f"{name:14s} {registry.describe(name)}")
        return
    if what in ("recipes", "pipelines"):
        root = project_root() / what
        for path in sorted(root.rglob("*.yaml")):
            typer.echo(str(path.relative_to(project_root())))
        return
    choices = [*ALL, "recipes", "pipelines"]
    raise MapoBenchError(f"cannot list {what!r}{suggest(what, choices)}; valid: {', '.join(choices)}")


def project_root() -> Path:
    """The checkout holding recipes/ and pipelines/ (the current folder if it has them)."""
    here = Path.cwd()
    if (here / "recipes").is_dir() or (here / "pipelines").is_dir():
        return here
    return Path(__file__).resolve().parent.parent


@config_app.command("validate")
def config_validate(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config")],
    overrides: Overrides = None,
    stage: Annotated[str | None, typer.Option(help="build | train | sample | eval | mismatch | pipeline | toy")] = None,
) -> None:
    """Validate a config file (with overrides) without running it.

    Example: mapo-bench config validate --config recipes/train/toy_mapo.yaml
    """
    from mapo_bench import api

    stage = stage or api.infer_stage(config)
    api.load_stage_config(stage, config, overrides or [])
    typer.echo(f"ok: {config} is a valid {stage} config")


@config_app.command("print")
def config_print(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config")],
    overrides: Overrides = None,
    stage: Annotated[str | None, typer.Option(help="build | train | sample | eval | mismatch | pipeline | toy")] = None,
) -> None:
    """Print the fully resolved config (defaults + file + overrides) as YAML.

    Example: mapo-bench config print --config recipes/train/sdxl_mapo.yaml lr=2e-5
    """
    from mapo_bench import api
    from mapo_bench.config import config_hash, dump_yaml

    stage = stage or api.infer_stage(config)
    cfg = api.load_stage_config(stage, config, overrides or [])
    typer.echo(f"# stage: {stage}  config_hash: {config_hash(cfg)}\n{dump_yaml(cfg)}", nl=False)


@app.command()
def env() -> None:
    """Print versions, threads and cache locations for bug reports.

    Example: mapo-bench env
    """
    import os

    from mapo_bench.clip_tokenizer import cache_root
    from mapo_bench.io import package_versions
    from mapo_bench.models import MODEL_ROOT_VAR
    from mapo_bench.threads import ENV_VAR, thread_count

    info = {"versions": package_versions(), "threads": thread_count(), "threads_env": ENV_VAR,
            "cache": str(cache_root()), MODEL_ROOT_VAR: os.environ.get(MODEL_ROOT_VAR),
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE"), "platform": sys.platform}
    typer.echo(json.dumps(info, indent=2))


@cache_app.command("ls")
def cache_ls() -> None:
    """List what the user cache holds, with sizes.

    Example: mapo-bench cache ls
    """
    from mapo_bench.clip_tokenizer import cache_root

    root = cache_root()
    if not root.is_dir():
        typer.echo(f"{root}: empty")
        return
    for entry in sorted(root.iterdir()):
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file()) if entry.is_dir() else entry.stat().st_size
        typer.echo(f"{size / 2**20:9.2f} MiB  {entry}")


@cache_app.command("clear")
def cache_clear(
    what: Annotated[str | None, typer.Argument(help="one entry of `cache ls` (default: everything)")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
) -> None:
    """Delete the user cache (or one entry of it).

    Example: mapo-bench cache clear toy --yes
    """
    import shutil

    from mapo_bench.clip_tokenizer import cache_root
    from mapo_bench.errors import MapoBenchError

    target = cache_root() / what if what else cache_root()
    if not target.exists():
        raise MapoBenchError(f"{target}: nothing to clear")
    if not yes and not typer.confirm(f"delete {target}?"):
        raise typer.Exit(1)
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    typer.echo(f"deleted {target}")


INTERRUPTED = "interrupted; outputs written so far are complete and the stage resumes on the next run"


WRITES = (("/data/", "a dataset shard"), ("/checkpoints/", "a training checkpoint"), ("/images/", "sample images"),
          ("scores.parquet", "a scores file"), ("/report/", "the report"), ("/.report.", "the report"))


def disk_full_line(path: str | None) -> str:
    """A full disk in one line: where, what was being written, and that rerunning resumes."""
    what = next((name for marker, name in WRITES if path and marker in path), "an output")
    return (f"no space left on device while writing {what} ({path or 'path unknown'}); nothing unfinished was "
            "kept as done: free space and run the same command again to resume")


class Termination:
    """The SIGTERM handler (``kill``, ``scancel``, a scheduler's time limit): the run stops as on Ctrl-C,
    so its pool workers are stopped rather than left writing on (exit code 143 instead of 130)."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum: int, frame: object) -> None:
        self.seen = True
        raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        return 143 if self.seen else 130


def main() -> None:
    """Console entry point: one line and a non-zero exit code for user errors, no stack trace."""
    import signal

    from mapo_bench.errors import MapoBenchError

    termination = Termination()
    previous = signal.signal(signal.SIGTERM, termination)
    try:
        app()
    except MapoBenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo(INTERRUPTED, err=True)
        sys.exit(termination.exit_code)
    except OSError as exc:
        import errno

        if exc.errno != errno.ENOSPC:
            raise
        typer.echo(f"error: {disk_full_line(exc.filename)}", err=True)
        sys.exit(1)
    except SystemExit as exc:  # typer turns Ctrl-C inside a command into a silent exit 130
        if exc.code == 130:
            typer.echo(INTERRUPTED, err=True)
            sys.exit(termination.exit_code)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)

