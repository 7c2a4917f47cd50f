"""``mapo-bench serve RUN_DIR``: the run's report and a pairwise rating page, on Flask, bound to 127.0.0.1.

Routes: ``/`` -> the report page; ``/run/<path>`` -> files under the run folder only (anything outside,
``..`` included, is a 404: Werkzeug's ``safe_join``); ``/rate`` -> the rating page; ``/api/next`` -> the
rater's next pair (JSON: prompt and two anonymous image URLs in the rater's left/right order);
``/api/vote`` (POST ``{"pair": id, "choice": "left" | "right" | "tie" | "skip"}``) -> one stored vote;
``/api/image/<pair>/<left|right>``. Unknown pairs or choices are a 400 and write nothing. The rater's name
is a cookie; the same rater never sees a pair twice (votes and skips both count).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from mapo_bench.errors import MapoBenchError
from mapo_bench.votes import VOTES_FILE, RatingPair, VoteStore, rating_pairs

RATER_COOKIE = "mapo_bench_rater"
RATER_NAME = re.compile(r"^[A-Za-z0-9 _.@-]{1,40}$")
TEMPLATE = "rate.html"


def rating_defaults(run_dir: Path) -> tuple[str, int]:
    """The pipeline's ``rating`` block (pairs as ``a:b,c:d``, votes per rater), from the run's pipeline.json."""
    from mapo_bench.io import read_json
    from mapo_bench.pipeline import RatingSpec

    path = Path(run_dir) / "pipeline.json"
    if not path.is_file():
        raise MapoBenchError(f"{run_dir}: not a run folder of `mapo-bench run` (pipeline.json missing)")
    rating = RatingSpec.model_validate(read_json(path).get("rating") or {})
    return ",".join(rating.pairs), rating.per_rater


def rater_order(pairs: list[RatingPair], rater: str) -> list[RatingPair]:
    """The rater's own order of the pairs (seeded by the name: reproducible, different per rater)."""
    order = list(pairs)
    random.Random(rater).shuffle(order)
    return order


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


def create_app(run_dir: Path, comparisons: list[tuple[str, str]], per_rater: int = 20,
               datasets: list[str] | None = None, trusted_hosts: list[str] | None = LOOPBACK_HOSTS) -> Any:
    """The Flask app of one run folder (``comparisons``: gallery column pairs such as ``("mapo", "dpo")``).

    ``trusted_hosts``: the ``Host`` headers answered (others get 400), so a web page whose name was
    re-pointed at 127.0.0.1 (DNS rebinding) cannot read the run or vote; None answers any host."""
    from flask import (
        Flask,
        abort,
        jsonify,
        redirect,
        render_template,
        request,
        send_file,
        send_from_directory,
    )

    run_dir = Path(run_dir).resolve()
    if not (run_dir / "pipeline.json").is_file():
        raise MapoBenchError(f"{run_dir}: not a run folder of `mapo-bench run` (pipeline.json missing)")
    pairs = rating_pairs(run_dir, comparisons, datasets)
    if not pairs:
        raise MapoBenchError(f"{run_dir}: no images to rate for {', '.join(f'{a}:{b}' for a, b in comparisons)} "
                             "(check --pairs against the report's sample columns)")
    by_id = {p.pair_id: p for p in pairs}
    store = VoteStore(run_dir / VOTES_FILE)
    app = Flask("mapo_bench", template_folder=str(Path(__file__).parent / "templates"))
    app.config.update(store=store, pairs=pairs, TRUSTED_HOSTS=trusted_hosts)

    def rater() -> str | None:
        name = request.cookies.get(RATER_COOKIE, "")
        return name if RATER_NAME.match(name) else None

    @app.get("/")
    def home() -> Any:
        return redirect("/run/report/index.html")

    @app.get("/run/<path:name>")
    def run_file(name: str) -> Any:
        if Path(name).name.startswith(VOTES_FILE):  # raters do not read each other's votes
            abort(404)
        return send_from_directory(run_dir, name)  # safe_join: a path leaving the folder is a 404

    @app.get("/rate")
    def rate() -> Any:
        return render_template(TEMPLATE, per_rater=per_rater, comparisons=[f"{a} vs {b}" for a, b in comparisons])

    @app.post("/api/rater")
    def set_rater() -> Any:
        name = str((request.get_json(silent=True) or {}).get("name", "")).strip()
        if not RATER_NAME.match(name):
            return jsonify(error="a name of 1-40 letters, digits, spaces or _.@-"), 400
        response = jsonify(rater=name)
        response.set_cookie(RATER_COOKIE, name, max_age=365 * 24 * 3600, samesite="Strict", httponly=True)
        return response

    @app.get("/api/next")
    def next_pair() -> Any:
        name = rater()
        if name is None:
            return jsonify(need_name=True)
        done = store.vote_count(name)
        seen = store.answered(name)
        pending = [p for p in rater_order(pairs, name) if p.pair_id not in seen]
        if done >= per_rater or not pending:
            return jsonify(rater=name, done=done, total=per_rater, finished=True)
        pair = pending[0]
        return jsonify(rater=name, done=done, total=per_rater, finished=False, pair=pair.pair_id, prompt=pair.prompt,
                       left=f"/api/image/{pair.pair_id}/left", right=f"/api/image/{pair.pair_id}/right")

    @app.get("/api/image/<pair>/<side>")
    def image(pair: str, side: str) -> Any:
        name, found = rater(), by_id.get(pair)
        if name is None or found is None or side not in ("left", "right"):
            abort(404)
        left_is_a = found.left_is_a(name)
        path = found.image_a if (side == "left") == left_is_a else found.image_b
        return send_file(path, max_age=0)

    @app.post("/api/vote")
    def vote() -> Any:
        name = rater()
        body = request.get_json(silent=True) or {}
        found, choice = by_id.get(str(body.get("pair", ""))), body.get("choice")
        if name is None:
            return jsonify(error="no rater name (set one first)"), 400
        if found is None:
            return jsonify(error="unknown pair"), 400
        if choice not in ("left", "right", "tie", "skip"):
            return jsonify(error="choice must be left, right, tie or skip"), 400
        if choice == "skip":
            store.skip(name, found)
            return jsonify(ok=True, skipped=True)
        left_model = found.model_a if found.left_is_a(name) else found.model_b
        stored = store.record(name, found, found.winner(name, choice), left_model)
        return jsonify(ok=True, duplicate=not stored)

    return app


def serve(run_dir: Path, comparisons: list[tuple[str, str]], per_rater: int = 20, host: str = "127.0.0.1",
          port: int = 8765, datasets: list[str] | None = None) -> None:
    """Run the app until interrupted (Werkzeug's threaded server: a local tool, not a public service)."""
    import warnings

    from werkzeug.serving import run_simple

    loopback = host in LOOPBACK_HOSTS
    if not loopback:
        warnings.warn(f"serving on {host}: anyone who can reach this address can read the run and vote", stacklevel=2)
    app = create_app(run_dir, comparisons, per_rater, datasets, trusted_hosts=LOOPBACK_HOSTS if loopback else None)
    print(f"report: http://{host}:{port}/   rating page: http://{host}:{port}/rate", flush=True)
    run_simple(host, port, app, threaded=True, use_reloader=False)
