"""Security review (issue 15): one test per claim of docs/security.md.

Source scans parse every module of ``mapo_bench/`` with ``ast`` (imports resolved, so ``from torch import
load`` counts as ``torch.load``); behavioural tests feed the code what a hostile file would hold (a pickle
that runs code, a YAML object tag, a dataset loading script, a PNG declaring 400 M pixels, a path leaving
the run folder) and check that it is refused and that nothing ran. The serve tests use a hand-made run
folder of two 4 px images, not the tiny pipeline.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import os
import re
import shutil
import struct
import zlib
from functools import cache
from pathlib import Path

import pytest

import mapo_bench
from mapo_bench.errors import MapoBenchError

PACKAGE = Path(mapo_bench.__file__).parent
ROOT = PACKAGE.parent
PIL_DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's default Image.MAX_IMAGE_PIXELS (about 0.25 GB of RGBA)


# -- source scans ----------------------------------------------------------------------------------
@cache
def sources() -> dict[str, ast.Module]:
    trees = {p.relative_to(ROOT).as_posix(): ast.parse(p.read_text(), filename=str(p)) for p in sorted(PACKAGE.rglob("*.py"))}
    assert len(trees) > 50, "the scan must see the whole package"
    return trees


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> what it was imported as (``sp`` -> ``subprocess``, ``load`` -> ``torch.load``)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def calls() -> list[tuple[str, ast.Call, str]]:
    """(file, call node, fully qualified callee) for every call whose callee is a plain dotted name."""
    found = []
    for file, tree in sources().items():
        aliases = _aliases(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (name := _dotted(node.func)):
                head, _, rest = name.partition(".")
                found.append((file, node, aliases.get(head, head) + (f".{rest}" if rest else "")))
    return found


def keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def imported_modules() -> list[tuple[str, str]]:
    out = []
    for file, tree in sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out += [(file, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                out.append((file, node.module))
    return out


class Payload:
    """Unpickling this runs ``os.mkdir(path)``: the marker a refused load must not leave."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


# -- 1. what is loaded from where ------------------------------------------------------------------
def test_no_trust_remote_code_anywhere_in_the_package():
    hits = [f for f in sources() if "trust_remote_code" in (ROOT / f).read_text()]
    assert hits == []


def test_every_torch_load_passes_weights_only_true():
    loads = [(f, c.lineno, c) for f, c, name in calls() if name in ("torch.load", "torch.serialization.load")]
    assert len(loads) >= 4  # optimizer state, toy pretrain resume, HPS and aesthetic checkpoints
    unsafe = [f"{f}:{line}" for f, line, c in loads if not is_true(keyword(c, "weights_only"))]
    assert unsafe == []


def test_pickled_code_in_a_checkpoint_is_refused_and_never_runs(tmp_path):
    """Our torch.load sites and the libraries' .bin readers (weights_only) refuse a pickle holding code."""
    import torch

    from mapo_bench.evaluators.aesthetic import load_mlp
    from mapo_bench.evaluators.hps import load_checkpoint as load_hps
    from mapo_bench.training.checkpoint import load_checkpoint

    marker = tmp_path / "ran"
    evil = {"state_dict": {"w": torch.zeros(1)}, "optimizer": Payload(marker)}
    for name in ("evil.pt", "evil.pth", "pytorch_model.bin"):
        torch.save(evil, tmp_path / name)
    checkpoint = tmp_path / "step-00000010"
    checkpoint.mkdir()
    (checkpoint / "state.json").write_text(json.dumps({"step": 10}))
    torch.save(evil, checkpoint / "optimizer.pt")
    for load in (lambda: load_hps(tmp_path / "evil.pt"), lambda: load_mlp(tmp_path / "evil.pth")):
        with pytest.raises(MapoBenchError, match="cannot load"):
            load()
    with pytest.raises(Exception, match="(?i)weights only|unsupported global"):
        load_checkpoint(checkpoint)
    from diffusers.models.model_loading_utils import load_state_dict as diffusers_load
    from transformers.modeling_utils import load_state_dict as transformers_load

    for load in (diffusers_load, transformers_load):
        with pytest.raises(Exception):  # noqa: B017 - each library words it its own way
            load(str(tmp_path / "pytorch_model.bin"))
    assert not marker.exists()


def test_weights_are_written_as_safetensors(tiny_toy):
    from diffusers import ModelMixin

    from mapo_bench.toy.shipped import ASSETS, ASSETS_FLOW

    weight_suffixes = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack", ".npy",
                       ".npz", ".onnx"}
    for folder in (ASSETS, ASSETS_FLOW, tiny_toy):  # shipped bases and what save_pretrained writes today
        weights = [p for p in folder.rglob("*") if p.suffix in weight_suffixes]
        assert weights and all(p.suffix == ".safetensors" for p in weights), folder
    # the denoiser exports call save_pretrained() and rely on diffusers' default
    assert inspect.signature(ModelMixin.save_pretrained).parameters["safe_serialization"].default is True
    lora_saves = [c for _, c, name in calls() if name.endswith("save_lora_weights")]
    assert lora_saves and all(is_true(keyword(c, "safe_serialization")) for c in lora_saves)
    turned_off = [f"{f}:{c.lineno}" for f, c, _ in calls() for k in ("safe_serialization", "use_safetensors")
                  if isinstance(keyword(c, k), ast.Constant) and keyword(c, k).value is False]
    assert turned_off == []
    # the only pickle-format files written: optimizer.pt, the toy pretrain resume file, the tiny HPS test kit
    saves = sorted({f for f, _, name in calls() if name == "torch.save"})
    assert saves == ["mapo_bench/evaluators/tiny.py", "mapo_bench/toy/pretrain.py", "mapo_bench/training/checkpoint.py"]


def test_shipped_toy_base_and_evaluator_are_checked_against_checksums(tmp_path, monkeypatch):
    from mapo_bench.toy import shipped

    for folder in (shipped.ASSETS, shipped.ASSETS_FLOW):  # every file of each shipped base is covered
        listed = set(json.loads((folder / shipped.CHECKSUMS).read_text())["files"])
        assert listed == {p.relative_to(folder).as_posix() for p in shipped.base_files(folder)}
    copy = tmp_path / "assets"
    shutil.copytree(shipped.ASSETS, copy, ignore=shutil.ignore_patterns("flow"))
    monkeypatch.setitem(shipped.SHIPPED, "toy-copy", (copy, "v", "recipes/toy/pretrain.yaml"))
    classifier = copy / "evaluators" / "classifier.safetensors"
    data = bytearray(classifier.read_bytes())
    data[-3] ^= 0x01
    classifier.write_bytes(bytes(data))
    shipped.check_shipped.cache_clear()
    try:
        with pytest.raises(MapoBenchError, match="damaged or changed") as info:
            shipped.evaluator_dir("toy-copy")
    finally:
        shipped.check_shipped.cache_clear()
    assert "classifier.safetensors" in str(info.value) and "\n" not in str(info.value)


def test_toy_models_never_come_from_the_hub():
    from mapo_bench.errors import ModelNotFoundError
    from mapo_bench.toy.shipped import resolve_toy_model

    with pytest.raises(ModelNotFoundError, match="hub lookups are disabled"):
        resolve_toy_model("someone/toy-base")


def test_model_resolution_local_then_model_root_then_hub_offline_in_one_line(tmp_path, monkeypatch):
    import time

    from mapo_bench.errors import ModelNotFoundError
    from mapo_bench.models import resolve_model

    local = tmp_path / "local"
    local.mkdir()
    assert resolve_model(str(local)) == local
    with pytest.raises(ModelNotFoundError, match="no such local path"):
        resolve_model(str(tmp_path / "missing"))
    root = tmp_path / "root"
    (root / "org" / "model").mkdir(parents=True)
    monkeypatch.setenv("MAPO_BENCH_MODEL_ROOT", str(root))
    assert resolve_model("org/model") == root / "org" / "model"
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:  # HF_HUB_OFFLINE=1 (conftest): the cache only, no network
        resolve_model("org/not-here")
    message = str(info.value)
    assert time.monotonic() - start < 30 and "\n" not in message
    assert "offline" in message and "'org/not-here'" in message and f"{root}/org/not-here" in message


def test_a_dataset_loading_script_is_never_run(tmp_path):
    """Hub ids for training (reader.HubSource) and prompts (hf://) go through datasets.load_dataset, which
    (datasets >= 4) refuses loading scripts: here a local dataset folder whose script would leave a marker."""
    from mapo_bench.data.prompts import read_source
    from mapo_bench.data.reader import HubSource

    marker = tmp_path / "ran"
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "evil.py").write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    with pytest.raises(MapoBenchError, match="cannot load") as info:
        HubSource(str(folder), "train")
    assert "\n" not in str(info.value)
    with pytest.raises(MapoBenchError, match="cannot load dataset"):
        read_source(f"hf://{folder}:train:caption")
    assert not marker.exists()
    load_calls = [c for _, c, name in calls() if name == "datasets.load_dataset"]
    assert len(load_calls) == 2 and all(keyword(c, "trust_remote_code") is None for c in load_calls)


# -- 2. mapo-bench serve ---------------------------------------------------------------------------
def png_bytes(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def fake_run(tmp_path):
    """A run folder with what the rating app reads: pipeline.json, report/results.json, and one prompt
    sampled by the base and by mapo (two 4 px images). ``secret.txt`` lies beside it, outside."""
    import pandas as pd

    run = tmp_path / "run"
    (run / "report").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("not part of the run")
    (run / "pipeline.json").write_text("{}")
    (run / "report" / "index.html").write_text("<html>report</html>")
    results = {"severity": {"d": {}}, "config": {"seeds": [0], "datasets": [{"name": "d", "task": "pick-style"}]},
               "selection": {"cells": {"d": {"mapo": {"status": "selected", "grid": {}}}}}}
    (run / "report" / "results.json").write_text(json.dumps(results))
    for label, colour in (("base", (255, 0, 0)), ("d/mapo/default-s0", (0, 0, 255))):
        folder = run / "samples" / label / "test"
        folder.mkdir(parents=True)
        (folder / "0.png").write_bytes(png_bytes(colour))
        pd.DataFrame({"prompt_id": [0], "seed": [0], "prompt": ["a cat"], "file": ["0.png"], "model": [label]}).to_parquet(
            folder / "index.parquet")
    return run


def app_client(run, name: str | None = "alice"):
    from mapo_bench.serve import create_app

    app = create_app(run, [("mapo", "base")], per_rater=5)
    client = app.test_client()
    if name:
        assert client.post("/api/rater", json={"name": name}).status_code == 200
    return app, client


def test_serve_binds_to_loopback_unless_told_and_warns_otherwise(fake_run, monkeypatch):
    import warnings

    import werkzeug.serving

    from mapo_bench import cli, serve

    assert inspect.signature(serve.serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(cli.serve).parameters["host"].default == "127.0.0.1"
    bound = []
    monkeypatch.setattr(werkzeug.serving, "run_simple", lambda host, port, app, **kw: bound.append(host))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loopback: no warning at all
        serve.serve(fake_run, [("mapo", "base")])
    with pytest.warns(UserWarning, match="anyone who can reach this address"):
        serve.serve(fake_run, [("mapo", "base")], host="0.0.0.0")
    assert bound == ["127.0.0.1", "0.0.0.0"]


def test_serve_has_exactly_the_documented_routes(fake_run):
    app, client = app_client(fake_run, name=None)
    routes = {(rule.rule, method) for rule in app.url_map.iter_rules() for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == {("/", "GET"), ("/run/<path:name>", "GET"), ("/rate", "GET"), ("/api/rater", "POST"),
                      ("/api/next", "GET"), ("/api/vote", "POST"), ("/api/image/<pair>/<side>", "GET"),
                      ("/static/<path:filename>", "GET")}
    assert not Path(app.static_folder).exists()  # Flask's default static route has no folder behind it
    for path in ("/static/serve.py", "/static/../serve.py", "/static/%2e%2e/serve.py"):
        assert client.get(path).status_code == 404, path


def test_serve_reads_no_file_outside_the_run_folder(fake_run):
    """/run/<path> serves files under the run but the votes database; a path leaving it is a 404."""
    _, client = app_client(fake_run, name=None)
    assert client.get("/run/report/index.html").status_code == 200
    assert (fake_run / "votes.sqlite").read_bytes().startswith(b"SQLite format 3")
    for name in ("votes.sqlite", "votes.sqlite-wal", "./votes.sqlite"):
        assert client.get(f"/run/{name}").status_code == 404, name
    for path in ("/run/../secret.txt", "/run/%2e%2e/secret.txt", "/run/..%2fsecret.txt", "/run/report/../../secret.txt",
                 "/run//etc/passwd", "/run/%2fetc/passwd", "/run/../../../../../../etc/passwd", "/run/..%5csecret.txt",
                 "/files/../../etc/passwd", "/../secret.txt"):
        response = client.get(path, follow_redirects=True)
        assert response.status_code == 404 and b"not part of the run" not in response.data, path
        assert b"root:" not in response.data, path


def test_serve_image_route_takes_no_path_from_the_request(fake_run):
    _, client = app_client(fake_run)
    pair = client.get("/api/next").json["pair"]
    shown = {client.get(f"/api/image/{pair}/{side}").data for side in ("left", "right")}
    samples = {p.read_bytes() for p in (fake_run / "samples").rglob("*.png")}
    assert shown == samples
    for path in (f"/api/image/{pair}/..", f"/api/image/{pair}/%2e%2e", "/api/image/../../secret.txt/left",
                 "/api/image/%2e%2e%2fsecret.txt/left", f"/api/image/{pair}/left/../../secret.txt",
                 f"/api/image/{pair}/up"):
        response = client.get(path)
        assert response.status_code == 404 and b"not part of the run" not in response.data, path
    _, anonymous = app_client(fake_run, name=None)
    assert anonymous.get(f"/api/image/{pair}/left").status_code == 404  # no rater cookie, no image


def test_serve_writes_only_votes_sqlite_with_bound_values(fake_run):
    from mapo_bench.votes import read_votes

    outside = fake_run.parent
    before = {p for p in outside.rglob("*")}
    _, client = app_client(fake_run)
    for name in ("x'; DROP TABLE votes; --", "<script>", "a" * 41, ""):  # the name is checked before any SQL
        assert client.post("/api/rater", json={"name": name}).status_code == 400
    pair = client.get("/api/next").json["pair"]
    assert client.post("/api/vote", json={"pair": pair, "choice": "left"}).json["ok"]
    client.get("/rate")
    client.get("/run/report/index.html")
    new = {p.relative_to(fake_run).as_posix() for p in set(outside.rglob("*")) - before}
    assert "votes.sqlite" in new and new <= {"votes.sqlite", "votes.sqlite-wal", "votes.sqlite-shm"}
    assert len(read_votes(fake_run)) == 1
    # every SQL text is a constant (values go as ? parameters); the one f-string joins a literal column list
    sql = [c for f, c, name in calls() if f == "mapo_bench/votes.py"
           and name.endswith((".execute", ".executescript", "read_sql_query"))]
    assert len(sql) >= 6
    for call in sql:
        text = call.args[0]
        if isinstance(text, ast.JoinedStr):
            assert ast.unparse(text) == "f\"SELECT {', '.join(columns)} FROM votes ORDER BY id\""
        else:
            assert isinstance(text, ast.Constant) or (isinstance(text, ast.Name) and text.id == "SCHEMA"), ast.unparse(text)


def test_serve_cookie_is_the_bare_rater_name_and_only_json_votes_count(fake_run):
    from mapo_bench.votes import read_votes

    _, client = app_client(fake_run, name=None)
    cookie = client.post("/api/rater", json={"name": "alice"}).headers["Set-Cookie"]
    assert cookie.startswith("mapo_bench_rater=alice;")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=31536000" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback
    pair = client.get("/api/next").json["pair"]
    # what another site's page can send without a CORS preflight: a form, or text/plain: refused, nothing stored
    assert client.post("/api/vote", data={"pair": pair, "choice": "left"}).status_code == 400
    assert client.post("/api/vote", data=json.dumps({"pair": pair, "choice": "left"}),
                       content_type="text/plain").status_code == 400
    assert len(read_votes(fake_run)) == 0
    # no login: whoever reaches the port can vote under any valid name by setting the cookie
    _, other = app_client(fake_run, name=None)
    other.set_cookie("mapo_bench_rater", "mallory")
    assert other.post("/api/vote", json={"pair": pair, "choice": "right"}).json["ok"]
    assert list(read_votes(fake_run)["rater"]) == ["mallory"]


# -- 3. a malicious dataset ------------------------------------------------------------------------
def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` RGB pixels (400 M: 1.2 GB decoded), 60 bytes long."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_pillow_decompression_bomb_limit_is_in_force():
    from PIL import Image

    import mapo_bench.data.imagefolder  # noqa: F401 - every module that decodes images, imported
    import mapo_bench.data.reader  # noqa: F401
    import mapo_bench.data.validate  # noqa: F401
    import mapo_bench.evaluators.run  # noqa: F401
    import mapo_bench.mismatch  # noqa: F401
    import mapo_bench.report  # noqa: F401

    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS <= PIL_DEFAULT_MAX_PIXELS
    changed = [f"{f}:{n.lineno}" for f, tree in sources().items() for n in ast.walk(tree)
               if isinstance(n, ast.Attribute) and n.attr in ("MAX_IMAGE_PIXELS", "LOAD_TRUNCATED_IMAGES")]
    assert changed == []


def test_a_decompression_bomb_is_one_line_naming_the_row_or_file(tmp_path):
    import pandas as pd
    from pairs_fixture import write_pairs

    from mapo_bench.data.imagefolder import read_image_folder
    from mapo_bench.data.reader import decode_image, find_bad_rows, open_pairs

    with pytest.raises(MapoBenchError, match=r"row 3 column 'jpg_0': cannot decode image \(DecompressionBombError\)") as info:
        decode_image(bomb_png(), 3, "jpg_0", "pairs")
    assert "\n" not in str(info.value)
    with pytest.raises(MapoBenchError, match="DecompressionBombError"):  # 100 M px: Pillow only warns; refused
        decode_image(bomb_png(10_000, 10_000), 3, "jpg_0", "pairs")
    dataset = write_pairs(tmp_path / "pairs", n=2)
    shard = next((dataset / "data").glob("*.parquet"))
    frame = pd.read_parquet(shard)
    frame.loc[1, "jpg_1"] = bomb_png()
    frame.to_parquet(shard, index=False)
    bad = find_bad_rows(open_pairs(dataset))
    assert list(bad) == [1] and "DecompressionBombError" in bad[1]
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(bomb_png())
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "bomb.png", "prompt": "a cat"}) + "\n")
    with pytest.raises(MapoBenchError, match="bomb.png") as info:
        read_image_folder(folder)
    assert "\n" not in str(info.value)


def test_captions_are_plain_text_and_pages_escape_them(tmp_path):
    import pandas as pd
    from pairs_fixture import write_pairs

    from mapo_bench.data.reader import open_pairs
    from mapo_bench.report_html import inline_markdown
    from mapo_bench.serve import create_app  # noqa: F401 - the rating app's Flask

    dataset = write_pairs(tmp_path / "pairs", n=2)
    shard = next((dataset / "data").glob("*.parquet"))
    frame = pd.read_parquet(shard)
    frame["caption"] = [{"a": 1}, {"a": 2}]
    frame.to_parquet(shard, index=False)
    with pytest.raises(MapoBenchError, match="column 'caption' is .* not a string"):
        open_pairs(dataset)
    assert "<img" not in str(inline_markdown("<img src=x onerror=alert(1)> **bold**"))
    for template in (PACKAGE / "templates").glob("*.html"):
        text = template.read_text()
        for unsafe in ("|safe", "| safe", "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                       "autoescape false", "eval("):
            assert unsafe not in text, (template.name, unsafe)
    environments = [c for f, c, name in calls() if name == "jinja2.Environment"]
    assert environments and all(keyword(c, "autoescape") is not None for c in environments)
    from flask import Flask

    assert Flask("probe").select_jinja_autoescape("rate.html")  # render_template escapes .html templates


def test_image_folder_metadata_cannot_point_outside_the_folder(tmp_path):
    from mapo_bench.data.imagefolder import read_image_folder

    (tmp_path / "outside.png").write_bytes(png_bytes((0, 255, 0)))
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("../outside.png", str(tmp_path / "outside.png")):
        (folder / "metadata.jsonl").write_text(json.dumps({"file_name": name, "prompt": "a cat"}) + "\n")
        with pytest.raises(MapoBenchError, match="points outside the folder"):
            read_image_folder(folder)


def test_no_pickle_in_the_package_and_pyarrow_past_the_extension_type_fix():
    import pyarrow

    pickling = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "torch.package"}
    found = [(f, m) for f, m in imported_modules() if m in pickling or m.split(".")[0] in pickling - {"torch.package"}]
    assert found == []
    risky = [f"{f}:{c.lineno}" for f, c, name in calls()
             if name.endswith(("read_pickle", "to_pickle", "pickle.load", "pickle.loads"))
             or (name in ("numpy.load", "np.load") and is_true(keyword(c, "allow_pickle")))]
    assert risky == []
    # pyarrow < 14.0.1 could unpickle a parquet file's extension type (CVE-2023-47248)
    assert tuple(int(x) for x in re.findall(r"\d+", pyarrow.__version__)[:3]) >= (14, 0, 1)


# -- 4. a malicious recipe or pipeline YAML --------------------------------------------------------
def test_yaml_object_tags_are_refused_in_one_line_and_never_run(tmp_path):
    from mapo_bench.config import load_config, parse_overrides, read_yaml
    from mapo_bench.training.config import TrainConfig

    marker = tmp_path / "ran"
    for i, tagged in enumerate((f"lr: !!python/object/apply:os.mkdir [{str(marker)!r}]\n",
                                "model: !!python/object:mapo_bench.config.StrictModel {}\n",
                                f"!!python/object/new:os.system [mkdir {marker}]\n",
                                "lr: !!python/name:os.system\n")):
        path = tmp_path / f"recipe{i}.yaml"
        path.write_text(tagged)
        with pytest.raises(MapoBenchError, match="is not valid YAML") as info:
            read_yaml(path)
        assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
        with pytest.raises(MapoBenchError):
            load_config(TrainConfig, path)
    # a command-line override with a tag stays a plain string
    value = f"!!python/object/apply:os.mkdir [{str(marker)!r}]"
    assert parse_overrides([f"model={value}"]) == {"model": value}
    assert not marker.exists()


def test_yaml_is_only_ever_read_with_safe_load():
    used, imported = set(), []
    for file, tree in sources().items():
        aliases = _aliases(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and aliases.get(node.value.id) == "yaml":
                used.add(node.attr)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "yaml":
                imported.append(f"{file}:{node.lineno}")
    assert "safe_load" in used and used <= {"safe_load", "safe_dump", "YAMLError"}
    assert imported == []


def test_every_config_model_refuses_unknown_keys(tmp_path):
    import yaml
    from pydantic import BaseModel
    from tiny_pipeline import tiny_spec

    from mapo_bench.api import STAGE_CONFIGS, stage_config_class
    from mapo_bench.config import StrictModel, load_config
    from mapo_bench.pipeline import PipelineSpec
    from mapo_bench.registry import METHODS

    direct = [(f, n.name) for f, tree in sources().items() for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
              and any((_dotted(b) or "").split(".")[-1] == "BaseModel" for b in n.bases)]
    assert direct == [("mapo_bench/config.py", "StrictModel")]
    configs = [f for f, tree in sources().items() for n in ast.walk(tree)
               if isinstance(n, ast.Name) and n.id in ("model_config", "ConfigDict")]
    assert set(configs) == {"mapo_bench/config.py"}
    for stage in STAGE_CONFIGS:
        stage_config_class(stage)
    for method in METHODS.names():
        METHODS.get(method)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    ours = {c for c in subclasses(BaseModel) if c.__module__.startswith("mapo_bench")}
    assert len(ours) > 20
    assert all(issubclass(c, StrictModel) and c.model_config.get("extra") == "forbid" for c in ours)
    spec = tiny_spec(tmp_path / "base", tmp_path / "train.yaml")
    for where, extra in ((spec, "post_run"), (spec["methods"]["mapo"], "hook"), (spec["eval"], "command")):
        where[extra] = "rm -rf ~"
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(MapoBenchError, match="unknown key"):
            load_config(PipelineSpec, path)
        del where[extra]


def test_no_eval_exec_or_shell_and_two_fixed_subprocesses():
    forbidden = ("eval", "exec", "compile", "__import__", "os.system", "os.popen", "pty.spawn", "commands.getoutput")
    prefixes = ("os.exec", "os.spawn", "os.posix_spawn", "asyncio.create_subprocess", "runpy.")
    bad = [f"{f}:{c.lineno} {name}" for f, c, name in calls() if name in forbidden or name.startswith(prefixes)]
    assert bad == []
    shell = [f"{f}:{c.lineno}" for f, c, _ in calls() if keyword(c, "shell") is not None]
    assert shell == []
    sites = [(f, c) for f, c, name in calls() if name.startswith("subprocess.")
             and name.split(".")[1] in ("run", "Popen", "call", "check_call", "check_output", "getoutput")]
    assert [(f, ast.literal_eval(c.args[0])) for f, c in sites if f != "mapo_bench/executors.py"] == \
        [("mapo_bench/toy/pretrain.py", ["git", "rev-parse", "--short", "HEAD"])]
    # the Slurm executor's launch of a multi-GPU job: an argument list whose program part is fixed
    assert [ast.unparse(c.args[0]) for f, c in sites if f == "mapo_bench/executors.py"] == ["command"]
    import sys

    from mapo_bench.executors import accelerate_command

    command = accelerate_command(2, ["run", "p.yaml; rm -rf /", "--job", "$(x)"])
    assert command[:6] == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "-m"]
    assert command[6:] == ["mapo_bench", "run", "p.yaml; rm -rf /", "--job", "$(x)"]  # arguments, never a shell


def test_config_names_never_pick_a_module_to_import():
    """import_module only in the registry and the stage table, on targets written in the code; a name a
    config gives is checked against the registry first."""
    from mapo_bench import registry
    from mapo_bench.api import STAGE_CONFIGS
    from mapo_bench.errors import UnknownNameError

    sites = sorted({f for f, _, name in calls() if name in ("importlib.import_module", "importlib.__import__")})
    assert sites == ["mapo_bench/api.py", "mapo_bench/registry.py"]
    tables = [r for r in vars(registry).values() if isinstance(r, registry.Registry)]
    targets = [t for r in tables for t in r._targets.values()] + [t for t, _ in STAGE_CONFIGS.values()]
    assert len(tables) == 4 and all(t.startswith("mapo_bench.") for t in targets)
    for table in tables:
        with pytest.raises(UnknownNameError):
            table.get("os:system")


def test_emit_commands_prints_commands_and_runs_none(tiny_toy, tmp_path, monkeypatch, capsys):
    import subprocess

    import yaml
    from tiny_pipeline import tiny_spec

    from mapo_bench.pipeline import PipelineSpec
    from mapo_bench.runner import run_pipeline

    def refuse(*args, **kwargs):
        raise AssertionError(f"--emit-commands started a process: {args[:1]}")

    for module, name in ((subprocess, "Popen"), (subprocess, "run"), (os, "system"), (os, "execv"), (os, "execvp"),
                         (os, "posix_spawn"), (os, "fork")):
        monkeypatch.setattr(module, name, refuse)
    recipe = tmp_path / "train.yaml"
    recipe.write_text(yaml.safe_dump({"max_steps": 2}))
    run = tmp_path / "run"
    assert run_pipeline(PipelineSpec.model_validate(tiny_spec(tiny_toy, recipe)), emit_commands=True, out=run) is None
    lines = [line for line in capsys.readouterr().out.splitlines() if line and not line.startswith("#")]
    assert len(lines) > 5 and all(line.startswith(f"mapo-bench run tiny --out {run} --job ") for line in lines)
    assert {p.name for p in run.iterdir()} <= {".lock", "pipeline.json", "configs"}
    assert all(isinstance(yaml.safe_load(p.read_text()), dict) for p in (run / "configs").glob("*.yaml"))


def test_build_and_sample_refuse_to_replace_a_folder_they_did_not_write(tmp_path):
    from mapo_bench.data.builder import prepare_folder as prepare_dataset
    from mapo_bench.data.config import BuildConfig
    from mapo_bench.evaluators.config import SampleConfig
    from mapo_bench.sampling import prepare_folder as prepare_samples

    victim = tmp_path / "documents"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    cfg = BuildConfig.model_validate({"task": "pick-style", "out": str(victim), "overwrite": True})
    with pytest.raises(MapoBenchError, match="not a dataset folder"):
        prepare_dataset(victim, cfg, "0" * 16)
    for overwrite in (False, True):
        with pytest.raises(MapoBenchError, match="not a sample folder"):
            prepare_samples(SampleConfig.model_validate({"out": str(victim), "overwrite": overwrite}))
    assert [p.name for p in victim.iterdir()] == ["keep.txt"] and (victim / "keep.txt").read_text() == "mine"


def test_serve_answers_only_loopback_host_names(fake_run):
    """A page on another site whose name was re-pointed at 127.0.0.1 (DNS rebinding) sends its own Host:
    400; the loopback names, with or without a port, are answered."""
    _, client = app_client(fake_run, name=None)
    for host in ("localhost", "127.0.0.1:8765", "localhost:8765", "[::1]:8765"):
        assert client.get("/run/report/index.html", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8765", "127.0.0.1.evil.example"):
        assert client.get("/run/report/index.html", headers={"Host": host}).status_code == 400, host


def test_a_sample_index_naming_a_file_outside_its_folder_is_refused(fake_run):
    """A received run folder whose index.parquet names ../../secret.txt (or an absolute path) is one line
    naming the index and row; nothing is served and nothing is read."""
    import pandas as pd

    from mapo_bench.sampling import read_index

    index = fake_run / "samples" / "base" / "test" / "index.parquet"
    for bad in ("../../../../secret.txt", str(fake_run.parent / "secret.txt")):
        pd.DataFrame({"prompt_id": [0], "seed": [0], "prompt": ["a cat"], "file": [bad], "model": ["base"]}).to_parquet(index)
        with pytest.raises(MapoBenchError, match=r"index.parquet: row 0: file .* is outside the sample folder"):
            read_index(index.parent)
        with pytest.raises(MapoBenchError, match="outside the sample folder"):
            app_client(fake_run, name=None)


def test_sd_backends_refuse_load_options_that_run_code(tmp_path):
    """backend_options reach from_pretrained; custom_pipeline / trust_remote_code would import a file a
    config names. They are refused before any model is looked up; a component set to null and variant pass."""
    from mapo_bench.backends import load_backend
    from mapo_bench.backends.sd15 import SD15Backend
    from mapo_bench.backends.sdxl import SDXLBackend

    (tmp_path / "pipeline.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')")
    for options in ({"custom_pipeline": str(tmp_path / "pipeline.py")}, {"trust_remote_code": True},
                    {"custom_revision": "main"}):
        for name in ("sd15", "sdxl"):
            with pytest.raises(MapoBenchError, match=f"backend {name}: backend_options .* not accepted"):
                load_backend(name, str(tmp_path / "no-model"), **options)
    assert not (tmp_path / "ran").exists()
    for cls in (SD15Backend, SDXLBackend):
        cls.check_load_options({"safety_checker": None, "variant": "fp16"})


def test_stages_never_replace_a_folder_they_did_not_write(fake_run, tmp_path):
    """eval, export-pairs, train, toy pretrain and report replace their own output folder (it holds the
    file each always writes), never another folder a mistyped --out names."""
    from mapo_bench.io import atomic_dir
    from mapo_bench.votes import export_pairs

    victim = tmp_path / "documents"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    with pytest.raises(MapoBenchError, match="was not written by this stage"):
        export_pairs(fake_run, [("mapo", "base")], victim)
    for marker in ("scores.parquet", "manifest.json", "toy_pipeline.json", "results.json"):
        with pytest.raises(MapoBenchError, match=f"has no {marker}"), atomic_dir(victim, overwrite=True, written_by=marker):
            pass
    assert [p.name for p in victim.iterdir()] == ["keep.txt"]
    out = export_pairs(fake_run, [("mapo", "base")], tmp_path / "pairs")
    assert export_pairs(fake_run, [("mapo", "base")], tmp_path / "pairs") == out  # its own folder: replaced


def test_pipeline_and_dataset_names_are_single_folder_names(tiny_toy, tmp_path):
    from tiny_pipeline import tiny_spec

    from mapo_bench.pipeline import PipelineSpec

    spec = tiny_spec(tiny_toy, tmp_path / "train.yaml")
    PipelineSpec.model_validate(spec)
    for bad in ("../escape", "a/b", ".hidden", "", "x" * 101):
        with pytest.raises(ValueError, match="is not a folder name"):
            PipelineSpec.model_validate({**spec, "name": bad})
        with pytest.raises(ValueError, match="is not a folder name"):
            PipelineSpec.model_validate({**spec, "datasets": [{**spec["datasets"][0], "name": bad}]})


def test_dependency_floors_exclude_the_known_unsafe_releases():
    """datasets < 4.0 can run a hub dataset's loading script; pyarrow 14.0.0 unpickles extension types
    (CVE-2023-47248); flask < 3.1 has no TRUSTED_HOSTS."""
    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = {Requirement(d).name: Requirement(d).specifier
            for d in tomllib.loads((Path(mapo_bench.__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name, unsafe, safe in (("datasets", "3.6.0", "4.0.0"), ("pyarrow", "14.0.0", "14.0.1"), ("flask", "3.0.3", "3.1.0")):
        assert Version(unsafe) not in deps[name] and Version(safe) in deps[name], name
