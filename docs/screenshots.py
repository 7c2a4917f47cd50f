"""Screenshots of a run's report page and rating page for the docs, in headless Debian chromium.

    python docs/screenshots.py runs/toy-quick docs/img      # writes report.png and rate.png

The rating page is served from the run folder on a free local port; the script gives a rater name (the
page's first screen) and casts no vote, so the run's votes.sqlite is left as it was.
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
from pathlib import Path

CHROMIUM = os.environ.get("MAPO_BENCH_CHROMIUM", "/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    from mapo_bench.serve import create_app, rating_defaults
    from mapo_bench.votes import parse_comparisons

    args.out.mkdir(parents=True, exist_ok=True)
    pairs, per_rater = rating_defaults(args.run)
    server = make_server("127.0.0.1", free_port(), create_app(args.run, parse_comparisons(pairs), per_rater), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto((args.run / "report" / "index.html").resolve().as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(args.out / "report.png"))
            page.goto(f"http://127.0.0.1:{server.server_port}/rate")
            page.fill("#name", "docs")
            page.click("#name-form button")
            page.wait_for_function("() => document.getElementById('left').complete"
                                   " && document.getElementById('left').naturalWidth > 0")
            page.screenshot(path=str(args.out / "rate.png"))
            browser.close()
    finally:
        server.shutdown()
    print(f"wrote {args.out / 'report.png'} and {args.out / 'rate.png'}")


if __name__ == "__main__":
    main()
