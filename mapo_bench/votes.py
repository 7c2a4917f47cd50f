"""Human votes of a run (issue 16): the rating pairs drawn from the run's samples and the SQLite file the
rating page writes (``<run>/votes.sqlite``).

A pair is two images of the same prompt and sampling seed from two models of one dataset (the gallery's
columns: base, target, each method at its selected setting, first training seed). Its id is a hash of what
it shows, so the page never names a model. Durability: WAL journal, ``synchronous=FULL`` and one
transaction per vote, so a crash or kill loses at most the vote in flight and never corrupts the file;
``UNIQUE(rater, pair_id)`` keeps one answer per rater and pair.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapo_bench.errors import MapoBenchError

VOTES_FILE = "votes.sqlite"
CHOICES = ("a", "b", "tie")  # what is stored: the winner as model a / model b, or a tie
SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rater TEXT NOT NULL, pair_id TEXT NOT NULL, dataset TEXT NOT NULL,
    model_a TEXT NOT NULL, model_b TEXT NOT NULL, prompt TEXT NOT NULL, prompt_id INTEGER NOT NULL,
    seed INTEGER NOT NULL, choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie')),
    left_model TEXT NOT NULL, source TEXT NOT NULL DEFAULT 'app', time TEXT NOT NULL,
    UNIQUE (rater, pair_id)
);
CREATE TABLE IF NOT EXISTS skips (
    rater TEXT NOT NULL, pair_id TEXT NOT NULL, time TEXT NOT NULL, PRIMARY KEY (rater, pair_id)
);
"""


@dataclass(frozen=True)
class RatingPair:
    """Two images of one prompt and seed from models ``a`` and ``b`` (run labels and image files)."""

    pair_id: str
    dataset: str
    model_a: str
    model_b: str
    prompt: str
    prompt_id: int
    seed: int
    image_a: Path
    image_b: Path

    def left_is_a(self, rater: str) -> bool:
        """The random left/right order of this pair for ``rater``: fixed per (rater, pair), so a reload shows
        the same order and a vote can be mapped back to a model without storing what was shown."""
        return hashlib.sha256(f"{rater}\0{self.pair_id}".encode()).digest()[0] % 2 == 0

    def winner(self, rater: str, side: str) -> str:
        """``left`` / ``right`` / ``tie`` as shown to ``rater`` -> the stored choice ``a`` / ``b`` / ``tie``."""
        if side == "tie":
            return "tie"
        return "a" if (side == "left") == self.left_is_a(rater) else "b"


def pair_id(dataset: str, model_a: str, model_b: str, prompt_id: int, seed: int) -> str:
    return hashlib.sha256(f"{dataset}\0{model_a}\0{model_b}\0{prompt_id}\0{seed}".encode()).hexdigest()[:16]


def rating_pairs(run_dir: Path, comparisons: list[tuple[str, str]], datasets: list[str] | None = None,
                 split: str = "test") -> list[RatingPair]:
    """Every pair the run can show for ``comparisons`` (gallery column names, e.g. ``("mapo", "dpo")``):
    one per dataset, prompt and sampling seed where both models have an image."""
    from mapo_bench.io import read_json
    from mapo_bench.results import selected_models
    from mapo_bench.sampling import read_index

    results_path = run_dir / "report" / "results.json"
    if not results_path.is_file():
        raise MapoBenchError(f"{results_path}: missing; run `mapo-bench report {run_dir}` first")
    results = read_json(results_path)
    wanted = datasets or list(results["severity"])
    unknown = [d for d in wanted if d not in results["severity"]]
    if unknown:
        raise MapoBenchError(f"datasets {', '.join(unknown)} not in this run; it has {', '.join(results['severity'])}")
    pairs = []
    for dataset in wanted:
        labels = dict(selected_models(results, dataset))
        for a, b in comparisons:
            if a not in labels or b not in labels:
                continue  # e.g. a failed cell: that method has no selected model here
            folders = [run_dir / "samples" / labels[m] / split for m in (a, b)]
            if not all((f / "index.parquet").is_file() for f in folders):
                continue
            index_a, index_b = (read_index(f) for f in folders)
            both = index_a.merge(index_b, on=["prompt_id", "seed"], suffixes=("_a", "_b"))
            for row in both.sort_values(["prompt_id", "seed"]).itertuples(index=False):
                pairs.append(RatingPair(pair_id(dataset, labels[a], labels[b], int(row.prompt_id), int(row.seed)),
                                        dataset, labels[a], labels[b], row.prompt_a, int(row.prompt_id), int(row.seed),
                                        folders[0] / row.file_a, folders[1] / row.file_b))
    return pairs


def parse_comparisons(text: str) -> list[tuple[str, str]]:
    """``"mapo:dpo,mapo:base"`` -> ``[("mapo", "dpo"), ("mapo", "base")]``."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        a, sep, b = item.partition(":")
        if not sep or not a or not b or a == b:
            raise MapoBenchError(f"--pairs: {item!r} is not MODEL:OTHER (e.g. mapo:dpo,mapo:base)")
        out.append((a, b))
    return out


class VoteStore:
    """The votes file: open it, record votes and skips, read what a rater answered."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(SCHEMA)
        self.lock = threading.Lock()  # one connection shared by the server's threads

    def close(self) -> None:
        self.conn.close()

    def record(self, rater: str, pair: RatingPair, choice: str, left_model: str, source: str = "app") -> bool:
        """Store one vote in its own transaction; False when this rater already answered this pair."""
        if choice not in CHOICES:
            raise MapoBenchError(f"vote choice {choice!r}; valid: {', '.join(CHOICES)}")
        try:
            with self.lock, self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.execute(
                    "INSERT INTO votes (rater, pair_id, dataset, model_a, model_b, prompt, prompt_id, seed, choice, "
                    "left_model, source, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (rater, pair.pair_id, pair.dataset, pair.model_a, pair.model_b, pair.prompt, pair.prompt_id,
                     pair.seed, choice, left_model, source, time.strftime("%Y-%m-%dT%H:%M:%S%z")))
        except sqlite3.IntegrityError:
            return False
        return True

    def skip(self, rater: str, pair: RatingPair) -> None:
        with self.lock, self.conn:
            self.conn.execute("INSERT OR IGNORE INTO skips (rater, pair_id, time) VALUES (?, ?, ?)",
                              (rater, pair.pair_id, time.strftime("%Y-%m-%dT%H:%M:%S%z")))

    def answered(self, rater: str) -> set[str]:
        """Pair ids this rater voted on or skipped (never shown again)."""
        with self.lock:
            rows = self.conn.execute("SELECT pair_id FROM votes WHERE rater = ? UNION SELECT pair_id FROM skips "
                                     "WHERE rater = ?", (rater, rater)).fetchall()
        return {r[0] for r in rows}

    def vote_count(self, rater: str) -> int:
        with self.lock:
            return int(self.conn.execute("SELECT COUNT(*) FROM votes WHERE rater = ?", (rater,)).fetchone()[0])


def read_votes(run_dir: Path) -> Any:
    """Every vote of a run as a DataFrame (empty when nobody voted); opened read-only."""
    import pandas as pd

    path = Path(run_dir) / VOTES_FILE
    columns = ["rater", "pair_id", "dataset", "model_a", "model_b", "prompt", "prompt_id", "seed", "choice",
               "left_model", "source", "time"]
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return pd.read_sql_query(f"SELECT {', '.join(columns)} FROM votes ORDER BY id", conn)
    finally:
        conn.close()


EXPORT_RATER = "export"  # the left/right order of an exported pair is the one this rater name gets
EXPORT_FILE = "pairs.csv"
EXPORT_COLUMNS = ("pair_id", "dataset", "prompt", "seed", "image_left", "image_right")
IMPORT_CHOICES = ("left", "right", "tie")


def export_pairs(run_dir: Path, comparisons: list[tuple[str, str]], out: Path, datasets: list[str] | None = None) -> Path:
    """A folder for a rating service outside the app: ``pairs.csv`` (``pair_id, dataset, prompt, seed,
    image_left, image_right``) and the images copied under anonymous names (``images/<pair_id>-left.png``),
    so neither the file nor the image paths name a model. Written atomically; returns the CSV."""
    import shutil

    import pandas as pd

    from mapo_bench.io import atomic_dir

    rows = []
    with atomic_dir(Path(out), overwrite=True, written_by="pairs.csv") as tmp:
        (tmp / "images").mkdir()
        for pair in rating_pairs(run_dir, comparisons, datasets):
            shown = (pair.image_a, pair.image_b) if pair.left_is_a(EXPORT_RATER) else (pair.image_b, pair.image_a)
            names = []
            for side, image in zip(("left", "right"), shown, strict=True):
                name = f"images/{pair.pair_id}-{side}{image.suffix}"
                shutil.copyfile(image, tmp / name)
                names.append(name)
            rows.append({"pair_id": pair.pair_id, "dataset": pair.dataset, "prompt": pair.prompt, "seed": pair.seed,
                         "image_left": names[0], "image_right": names[1]})
        pd.DataFrame(rows, columns=list(EXPORT_COLUMNS)).to_csv(tmp / EXPORT_FILE, index=False)
    return Path(out) / EXPORT_FILE


def import_votes(run_dir: Path, comparisons: list[tuple[str, str]], csv_path: Path,
                 datasets: list[str] | None = None) -> int:
    """Votes from a CSV with ``rater, pair_id, choice`` (choice ``left`` / ``right`` / ``tie`` as in the
    exported file) into the run's votes file: every row is checked before anything is written (a bad one is
    one line naming its row), and importing a file again adds nothing (a rater's second answer to a pair is
    ignored). Returns the number of new votes."""
    import pandas as pd

    path = Path(csv_path)
    if not path.is_file():
        raise MapoBenchError(f"{path}: no such votes file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise MapoBenchError(f"{path}: not a CSV ({exc})") from None
    missing = [c for c in ("rater", "pair_id", "choice") if c not in frame.columns]
    if missing:
        raise MapoBenchError(f"{path}: missing column(s) {', '.join(missing)} (expected rater, pair_id, choice)")
    by_id = {p.pair_id: p for p in rating_pairs(run_dir, comparisons, datasets)}
    checked = []
    for number, row in enumerate(frame.itertuples(index=False), start=2):  # row 1 is the header
        rater, pid, choice = row.rater.strip(), row.pair_id.strip(), row.choice.strip().lower()
        if not rater:
            raise MapoBenchError(f"{path}: row {number}: empty rater")
        if pid not in by_id:
            raise MapoBenchError(f"{path}: row {number}: unknown pair_id {pid!r} (not a pair of this run and --pairs)")
        if choice not in IMPORT_CHOICES:
            raise MapoBenchError(f"{path}: row {number}: choice {row.choice!r}; valid: {', '.join(IMPORT_CHOICES)}")
        checked.append((rater, by_id[pid], choice))
    store = VoteStore(Path(run_dir) / VOTES_FILE)
    try:
        new = 0
        for rater, pair, choice in checked:
            left_model = pair.model_a if pair.left_is_a(EXPORT_RATER) else pair.model_b
            new += store.record(rater, pair, pair.winner(EXPORT_RATER, choice), left_model, source=f"import:{path.name}")
    finally:
        store.close()
    return new
