"""The run's progress display (issue 16): concise lines when not on a terminal, a live table on one, the
time left from the stages' measured mean wall times (else the pipeline's estimates), and stages silenced."""

from __future__ import annotations

import io

from rich.console import Console

from mapo_bench.progress import RunDisplay, fmt_seconds, quiet, quiet_stage

JOBS = [("build:a", "build"), ("train:a:mapo", "train"), ("train:a:dpo", "train"), ("eval:a", "eval")]


def test_time_left_by_hand():
    """Estimates build 30, train 10, eval 5; two workers. Before anything ran: (30 + 2 * 10 + 5) / 2 = 27.5 s.
    After build took 20 s and one train 4 s: (1 * 4 + 5) / 2 = 4.5 s. A stage with neither a measured job nor
    an estimate: unknown."""
    display = RunDisplay("p", JOBS, workers=2, estimates_s={"build": 30, "train": 10, "eval": 5}, enabled=False)
    assert display.seconds_left() == 27.5
    display.finished("build:a", "build", 20.0)
    display.finished("train:a:mapo", "train", 4.0)
    assert display.seconds_left() == 4.5
    assert RunDisplay("p", JOBS, enabled=False).seconds_left() is None
    assert fmt_seconds(3725.4) == "1:02:05" and fmt_seconds(None) == "-"


def test_plain_lines_when_not_a_terminal():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200)
    with RunDisplay("tiny", JOBS, workers=1, estimates_s={"train": 10, "eval": 5}, console=console) as display:
        display.skip("build:a", "build")
        for job_id, verb in JOBS[1:]:
            display.started(job_id, verb)
            display.finished(job_id, verb, 2.0)
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "tiny: 4 jobs 1 build, 2 train, 1 eval"
    assert len(lines) == 4 and all(line.strip() for line in lines)  # one line per finished job, no blank lines
    assert lines[1].endswith("2/4 train:a:mapo 2.0 s (left ~0:00:07)")  # 1 train at 2.0 s + 1 eval at 5 s
    assert lines[3].endswith("4/4 eval:a 2.0 s (left ~0:00:00)")
    assert "queued" not in buffer.getvalue()


def test_live_table_on_a_terminal():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    with RunDisplay("tiny", JOBS, workers=2, console=console) as display:
        display.started("train:a:mapo", "train")
        rendered = Console(file=io.StringIO(), width=120, record=True)
        rendered.print(display.table())
        text = rendered.export_text()
        assert "train" in text and "0/2" in text and "train:a:mapo" in text
        display.finished("train:a:mapo", "train", 3.0)
    assert "1/4 jobs" in buffer.getvalue()  # the final table stays on screen


def test_quiet_stage_restores_the_environment():
    assert not quiet()
    with quiet_stage():
        assert quiet()
    assert not quiet()
