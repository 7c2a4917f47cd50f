"""``mapo-bench serve`` (issue 16): the rating app on a copy of the tiny run. Path traversal is a 404, bad
votes are a 400 that writes nothing, a rater never sees a pair twice, a vote maps the shown side back to the
model, a SIGKILL mid-vote leaves a sound database, and in headless chromium the page records votes by click
and by key and survives a reload."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from mapo_bench.votes import VOTES_FILE, read_votes

COMPARISONS = [("mapo", "dpo"), ("mapo", "base")]


@pytest.fixture
def run(tiny_runs, tmp_path):
    """A private copy of the tiny run (votes must not reach the runs other tests compare)."""
    _, (first, _) = tiny_runs
    copy = tmp_path / "run"
    shutil.copytree(first, copy, ignore=shutil.ignore_patterns(VOTES_FILE + "*"))
    return copy


def client(run, per_rater=5, name="alice"):
    from mapo_bench.serve import create_app

    app = create_app(run, COMPARISONS, per_rater=per_rater)
    c = app.test_client()
    if name:
        assert c.post("/api/rater", json={"name": name}).status_code == 200
    return c


def test_only_files_under_the_run_are_served(run):
    c = client(run, name=None)
    assert c.get("/").headers["Location"].endswith("/run/report/index.html")
    assert c.get("/run/report/index.html").status_code == 200
    assert c.get("/run/pipeline.json").status_code == 200
    outside = run.parent / "secret.txt"
    outside.write_text("not part of the run")
    for path in ("/run/../secret.txt", "/run/%2e%2e/secret.txt", "/run/..%2fsecret.txt", "/run/report/../../secret.txt",
                 "/run//etc/passwd", "/run/%2fetc/passwd", "/run/..%5csecret.txt"):
        response = c.get(path, follow_redirects=True)
        assert response.status_code == 404 and b"not part of the run" not in response.data, path


def test_the_pipeline_sets_what_raters_are_asked(run):
    from mapo_bench.serve import rating_defaults

    assert rating_defaults(run) == ("mapo:dpo", 20)  # the tiny pipeline has no rating block: the defaults
    spec = json.loads((run / "pipeline.json").read_text())
    spec["rating"] = {"pairs": ["mapo:base", "dpo:base"], "per_rater": 7}
    (run / "pipeline.json").write_text(json.dumps(spec))
    assert rating_defaults(run) == ("mapo:base,dpo:base", 7)


def test_bad_votes_are_400_and_write_nothing(run):
    anonymous = client(run, name=None)
    assert anonymous.get("/api/next").json == {"need_name": True}
    assert anonymous.post("/api/rater", json={"name": "<script>"}).status_code == 400
    c = client(run)
    pair = c.get("/api/next").json["pair"]
    assert anonymous.post("/api/vote", json={"pair": pair, "choice": "left"}).status_code == 400  # no rater
    assert c.post("/api/vote", json={"pair": "0" * 16, "choice": "left"}).status_code == 400
    assert c.post("/api/vote", json={"pair": pair, "choice": "up"}).status_code == 400
    assert c.post("/api/vote", data="not json").status_code == 400
    assert c.get(f"/api/image/{'0' * 16}/left").status_code == 404
    assert len(read_votes(run)) == 0


def test_a_rater_never_sees_a_pair_twice_and_the_side_maps_to_the_model(run):
    from mapo_bench.votes import rating_pairs

    pairs = {p.pair_id: p for p in rating_pairs(run, COMPARISONS)}
    c = client(run, per_rater=6)
    shown, skipped = [], None
    while not (nxt := c.get("/api/next").json)["finished"]:
        shown.append(nxt["pair"])
        if skipped is None:
            skipped = nxt["pair"]
            assert c.post("/api/vote", json={"pair": nxt["pair"], "choice": "skip"}).json["skipped"]
            continue
        assert c.post("/api/vote", json={"pair": nxt["pair"], "choice": "left"}).json == {"ok": True, "duplicate": False}
    assert len(shown) == len(set(shown)) == 7 and nxt["done"] == 6  # 6 votes + 1 skip, none shown twice
    assert c.post("/api/vote", json={"pair": shown[1], "choice": "right"}).json["duplicate"]  # first answer kept
    votes = read_votes(run)
    assert len(votes) == 6 and skipped not in set(votes["pair_id"])
    for vote in votes.itertuples():
        pair = pairs[vote.pair_id]
        left_is_a = pair.left_is_a("alice")
        assert vote.left_model == (pair.model_a if left_is_a else pair.model_b)
        assert vote.choice == ("a" if left_is_a else "b")  # "left" won: the model shown on the left
        # the image served as "left" is that model's file
        assert c.get(f"/api/image/{vote.pair_id}/left").data == \
            (pair.image_a if left_is_a else pair.image_b).read_bytes()
    # another rater gets their own order and is not limited by alice's votes
    bob = client(run, per_rater=6, name="bob")
    assert bob.get("/api/next").json["done"] == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, payload, cookie):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Cookie": cookie})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_a_server_killed_mid_vote_leaves_a_sound_database(run):
    """Votes stream in from a thread while the server process is SIGKILLed: the file passes SQLite's
    integrity check and holds every acknowledged vote (at most the one in flight more)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mapo_bench", "serve", str(run), "--pairs", "mapo:dpo,mapo:base",
                               "--per-rater", "1000", "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/rate", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        acknowledged, stop = [], threading.Event()

        def voter():
            cookie = "mapo_bench_rater=killer"
            while not stop.is_set():
                try:
                    with urllib.request.urlopen(urllib.request.Request(base + "/api/next", headers={"Cookie": cookie}),
                                                timeout=10) as response:
                        nxt = json.loads(response.read())
                    if nxt.get("finished"):
                        return
                    if post(base + "/api/vote", {"pair": nxt["pair"], "choice": "tie"}, cookie)["ok"]:
                        acknowledged.append(nxt["pair"])
                except (OSError, http.client.HTTPException):  # the server died mid-response (IncompleteRead)
                    return

        thread = threading.Thread(target=voter)
        thread.start()
        while len(acknowledged) < 5 and thread.is_alive():
            time.sleep(0.01)
        os.killpg(server.pid, signal.SIGKILL)
        stop.set()
        thread.join(timeout=20)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=20)
    assert len(acknowledged) >= 5
    conn = sqlite3.connect(run / VOTES_FILE)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = [r[0] for r in conn.execute("SELECT pair_id FROM votes ORDER BY id")]
    conn.close()
    assert stored[: len(acknowledged)] == acknowledged and len(stored) <= len(acknowledged) + 1


@pytest.fixture
def live_server(run):
    """The app on a real port in a thread (Werkzeug), for the browser."""
    from werkzeug.serving import make_server

    from mapo_bench.serve import create_app

    server = make_server("127.0.0.1", free_port(), create_app(run, COMPARISONS, per_rater=4), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", run
    server.shutdown()


def test_rating_page_in_a_browser(live_server, page):
    url, run = live_server
    page.goto(url + "/rate")
    page.fill("#name", "carol")
    page.click("#name-form button")
    page.wait_for_selector("#rating:not([hidden])")
    seen = []

    def current_pair():
        page.wait_for_function("() => document.getElementById('left').complete && document.getElementById('left').naturalWidth > 0")
        return page.get_attribute("#left", "src").split("/")[3]

    seen.append(current_pair())
    page.click("#left")  # a click on the image votes for it
    page.wait_for_function("() => document.getElementById('status').textContent.includes('1 of 4')")
    seen.append(current_pair())
    page.keyboard.press("ArrowRight")  # a key votes too
    page.wait_for_function("() => document.getElementById('status').textContent.includes('2 of 4')")
    page.reload()  # the name and the votes survive a reload
    page.wait_for_function("() => document.getElementById('status').textContent.includes('2 of 4')")
    seen.append(current_pair())
    page.keyboard.press("2")  # tie
    page.wait_for_function("() => document.getElementById('status').textContent.includes('3 of 4')")
    seen.append(current_pair())
    page.click("#vote-right")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('done')")
    assert len(seen) == len(set(seen)) == 4
    votes = read_votes(run)
    assert list(votes["pair_id"]) == seen and list(votes["rater"]) == ["carol"] * 4
    assert votes["choice"].iloc[2] == "tie"
    assert page.errors == []
    # the next report carries the votes as the human metric, and its page shows them
    from mapo_bench.report import write_report

    out = write_report(run)
    human = json.loads((out / "results.json").read_text())["human"]
    assert human["votes_per_rater"] == {"carol": 4} and sum(r["n"] for r in human["rows"]) == 4
    page.goto((out / "index.html").as_uri())
    assert page.locator("#human tbody tr").count() == len(human["rows"]) and page.errors == []


def cli(*args):
    return subprocess.run([sys.executable, "-m", "mapo_bench", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_export_pairs_and_import_votes_round_trip(run, tmp_path):
    """Export anonymised pairs, rate them outside (here: 'left' on every pair, a tie on one), import: the
    stored winner is the model shown on the left; a bad row is one line naming it, exit 2, nothing written;
    a second import adds nothing; the report then carries the human win rate."""
    import pandas as pd

    from mapo_bench.votes import EXPORT_RATER, rating_pairs

    out = tmp_path / "export"
    assert cli("export-pairs", run, "--pairs", "mapo:dpo", "--out", out).returncode == 0
    exported = pd.read_csv(out / "pairs.csv")
    assert list(exported.columns) == ["pair_id", "dataset", "prompt", "seed", "image_left", "image_right"]
    assert not exported.astype(str).apply(lambda c: c.str.contains("mapo|dpo")).any().any()  # anonymised
    pairs = {p.pair_id: p for p in rating_pairs(run, [("mapo", "dpo")])}
    for row in exported.itertuples():  # the exported left image is the model shown on the left
        pair = pairs[row.pair_id]
        left = pair.image_a if pair.left_is_a(EXPORT_RATER) else pair.image_b
        assert (out / row.image_left).read_bytes() == left.read_bytes()
    rated = pd.DataFrame({"rater": "dana", "pair_id": exported["pair_id"], "choice": "left"})
    rated.loc[0, "choice"] = "tie"
    bad = rated.copy()
    bad.loc[2, "choice"] = "up"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    result = cli("import-votes", run, tmp_path / "bad.csv", "--pairs", "mapo:dpo")
    assert result.returncode == 2 and "row 4: choice 'up'" in result.stderr and len(result.stderr.splitlines()) == 1
    assert len(read_votes(run)) == 0
    rated.to_csv(tmp_path / "rated.csv", index=False)
    assert cli("import-votes", run, tmp_path / "rated.csv", "--pairs", "mapo:dpo").returncode == 0
    again = cli("import-votes", run, tmp_path / "rated.csv", "--pairs", "mapo:dpo")
    assert again.returncode == 0 and "0 new vote(s)" in again.stdout
    votes = read_votes(run)
    assert len(votes) == len(exported)
    for vote in votes.itertuples():
        pair = pairs[vote.pair_id]
        shown_left = pair.model_a if pair.left_is_a(EXPORT_RATER) else pair.model_b
        assert vote.left_model == shown_left
        assert vote.choice == ("tie" if vote.pair_id == exported["pair_id"][0] else
                               "a" if shown_left == pair.model_a else "b")
    assert cli("report", run).returncode == 0
    human = json.loads((run / "report" / "results.json").read_text())["human"]
    assert human["votes"] == len(exported) and human["votes_per_rater"] == {"dana": len(exported)}
    assert all(r["comparison"] == "mapo vs dpo" for r in human["rows"])
