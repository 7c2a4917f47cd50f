"""The fault-injection suite at a larger count (issue 15): every named point of every stage on the toy
backend, killed at its 1st, 2nd, ... N-th visit, resumed, and compared with an uninterrupted run.

    python benchmarks/fault_suite.py --visits 3 [--out fault_suite.json]

Prints one row per point (visits tried, killed there, resumed, identical) and the totals; a visit the
point never reaches (a stage that reaches it fewer times) is counted as not reached, not as survived.
Uses the commands, the tiny toy base and the comparison of ``tests/test_faults.py``, so the suite and the
tests cannot drift apart. Exit 1 when any resumed output differs. About 10 s per kill on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

REFERENCES = {"build": "ref-dataset", "train": "ref-train", "sample": "ref-samples", "eval": "ref-eval",
              "mismatch": "ref-mismatch"}


def reference_world(root: Path):
    """The tiny toy base and each stage's uninterrupted output (as the tests' ``world`` fixture)."""
    from test_faults import cli, commands

    from mapo_bench.toy.tiny import build_tiny_toy

    base = build_tiny_toy(root / "base")
    run = commands(base, root)
    for stage in ("build", "sample", "train", "eval"):
        result = cli(run[stage](root / REFERENCES[stage]))
        if result.returncode != 0:
            raise SystemExit(f"reference {stage} failed: {result.stderr[-500:]}")
    shutil.copytree(root / "ref-dataset", root / "ref-mismatch")
    if cli(run["mismatch"](root / "ref-mismatch")).returncode != 0:
        raise SystemExit("reference mismatch failed")
    return run


def try_point(run, root: Path, name: str, visit: int) -> dict[str, bool]:
    """Kill ``name`` at its ``visit``-th visit in a fresh output, resume, compare."""
    from test_faults import cli, record

    stage = name.split(":")[0]
    out = Path(tempfile.mkdtemp(dir=root)) / "out"
    if stage == "mismatch":
        shutil.copytree(root / "ref-dataset", out)
    args = run[stage](out)
    if name == "train:inside-cache-shard":  # the shared cache is full: this point needs one of its own
        args = [*args[:-2], f"cache.dir={out.parent / 'cache'}", *args[-2:]]
    killed = cli(args, f"{name}@{visit}")
    if killed.returncode != -9:
        return {"reached": False, "resumed": False, "identical": False}
    resumed = cli(args)
    same = resumed.returncode == 0 and record(stage, out) == record(stage, root / REFERENCES[stage])
    shutil.rmtree(out.parent, ignore_errors=True)
    return {"reached": True, "resumed": resumed.returncode == 0, "identical": same}


def main() -> int:
    from mapo_bench.faults import POINTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=3, help="kill at each point's 1st..N-th visit")
    parser.add_argument("--out", type=Path, default=None, help="write the counts as JSON here")
    args = parser.parse_args()
    points = [p for p in POINTS if not p.startswith(("run:", "report:"))]  # run / report: tests/test_faults.py
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = reference_world(root)
        rows = []
        for name in points:
            tries = [try_point(run, root, name, visit) for visit in range(1, args.visits + 1)]
            row = {"point": name, "tried": len(tries), **{k: sum(t[k] for t in tries) for k in ("reached", "resumed", "identical")}}
            rows.append(row)
            print(f"{name:32s} tried {row['tried']}  killed there {row['reached']}  resumed {row['resumed']}  "
                  f"identical {row['identical']}", flush=True)
    totals = {k: sum(r[k] for r in rows) for k in ("tried", "reached", "resumed", "identical")}
    print(f"{'total':32s} tried {totals['tried']}  killed there {totals['reached']}  resumed {totals['resumed']}  "
          f"identical {totals['identical']}")
    if args.out:
        args.out.write_text(json.dumps({"visits": args.visits, "points": rows, "totals": totals}, indent=2) + "\n")
    return 0 if totals["identical"] == totals["reached"] else 1


if __name__ == "__main__":
    sys.exit(main())
