"""What ``mapo-bench run`` shows while it works (issue 16): one live display instead of a line per job.

On a terminal: a live table of every stage (jobs done / total, running now), the current jobs, elapsed
time and an estimate of the time left (each stage's mean wall time so far, else the pipeline's
``estimates_s``, times its jobs left, divided by the workers). Elsewhere (CI, a log file): one concise line
per finished job, no blank lines, nothing per queued job. The stages a run starts keep their own progress
bars to themselves (``MAPO_BENCH_QUIET``), so the two never interleave.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any

QUIET_ENV = "MAPO_BENCH_QUIET"
VERB_ORDER = ("build", "mismatch", "train", "sample", "eval")


def quiet() -> bool:
    """Whether a stage runs inside ``mapo-bench run`` (its own bars and notes stay silent)."""
    return os.environ.get(QUIET_ENV) == "1"


@contextmanager
def quiet_stage():
    """Run a stage with its own progress output off (restored afterwards)."""
    old = os.environ.get(QUIET_ENV)
    os.environ[QUIET_ENV] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(QUIET_ENV, None)
        else:
            os.environ[QUIET_ENV] = old


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunDisplay:
    """Progress of a set of jobs by stage. ``jobs``: (id, verb) of every job this call will go through."""

    def __init__(self, name: str, jobs: list[tuple[str, str]], workers: int = 1,
                 estimates_s: dict[str, float] | None = None, console: Any = None, enabled: bool = True) -> None:
        from rich.console import Console

        self.name, self.workers, self.enabled = name, max(1, workers), enabled
        self.estimates = dict(estimates_s or {})
        self.console = console or Console(stderr=True)
        self.total: dict[str, int] = defaultdict(int)
        for _, verb in jobs:
            self.total[verb] += 1
        self.done: dict[str, int] = defaultdict(int)
        self.skipped: dict[str, int] = defaultdict(int)
        self.walls: dict[str, list[float]] = defaultdict(list)
        self.running: dict[str, float] = {}
        self.start = time.perf_counter()
        self.live: Any = None

    # -- state ------------------------------------------------------------------------------------
    def verbs(self) -> list[str]:
        return [v for v in VERB_ORDER if v in self.total] + sorted(v for v in self.total if v not in VERB_ORDER)

    def seconds_left(self) -> float | None:
        """Jobs left per stage times that stage's mean wall time (else its estimate), over the workers."""
        left = 0.0
        for verb in self.verbs():
            todo = self.total[verb] - self.done[verb] - self.skipped[verb]
            per_job = (sum(self.walls[verb]) / len(self.walls[verb])) if self.walls[verb] else self.estimates.get(verb)
            if todo and per_job is None:
                return None
            left += todo * (per_job or 0.0)
        return left / self.workers

    def finished_count(self) -> int:
        return sum(self.done.values()) + sum(self.skipped.values())

    # -- events -----------------------------------------------------------------------------------
    def skip(self, job_id: str, verb: str) -> None:
        """A job found finished by an earlier run."""
        self.skipped[verb] += 1
        self.refresh()

    def started(self, job_id: str, verb: str) -> None:
        self.running[job_id] = time.perf_counter()
        self.refresh()

    def finished(self, job_id: str, verb: str, wall: float) -> None:
        self.running.pop(job_id, None)
        self.done[verb] += 1
        self.walls[verb].append(wall)
        if self.enabled and self.live is None:  # not a terminal: one line per finished job
            total = sum(self.total.values())
            left = self.seconds_left()
            self.console.print(f"{time.strftime('%H:%M:%S')} {self.finished_count()}/{total} {job_id} "
                               f"{wall:.1f} s (left ~{fmt_seconds(left)})", highlight=False, soft_wrap=True,
                               markup=False, emoji=False)
        self.refresh()

    # -- rendering --------------------------------------------------------------------------------
    def table(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        elapsed = time.perf_counter() - self.start
        table = Table(title=f"{self.name}: {self.finished_count()}/{sum(self.total.values())} jobs, elapsed "
                            f"{fmt_seconds(elapsed)}, left ~{fmt_seconds(self.seconds_left())}",
                      title_justify="left")
        for column in ("stage", "done", "running", "mean s/job"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        for verb in self.verbs():
            running = sum(1 for j in self.running if j.startswith(verb + ":"))
            mean = f"{sum(self.walls[verb]) / len(self.walls[verb]):.1f}" if self.walls[verb] else "-"
            table.add_row(verb, f"{self.done[verb] + self.skipped[verb]}/{self.total[verb]}", str(running), mean)
        now = time.perf_counter()
        for job_id, since in sorted(self.running.items(), key=lambda item: item[1])[:8]:
            table.add_row(Text(f"  {job_id}"), "", f"{now - since:.0f} s", "")  # ids are text, not markup
        return table

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.table())

    def __enter__(self) -> RunDisplay:
        if self.enabled and self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self.table(), console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        elif self.enabled:
            self.console.print(f"{self.name}: {sum(self.total.values())} jobs "
                               + ", ".join(f"{self.total[v]} {v}" for v in self.verbs()), highlight=False,
                               markup=False, emoji=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.update(self.table())
            self.live.__exit__(*exc)
            self.live = None
