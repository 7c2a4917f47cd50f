"""``mapo-bench run --executor local|ray|slurm`` (issue 17): the same plan, markers and results on every
executor. Slurm runs through submitit's local executor (each job a subprocess, as on a cluster node);
Ray on a local cluster of two CPUs. Both end to end are slow (a process start per job)."""

from __future__ import annotations

import json
import os

import pytest
from test_faults import cli, comparable_results, tiny_run_reference  # noqa: F401 - a fixture, used by name

from mapo_bench.errors import MapoBenchError


def test_resources_map_to_submitit_parameters_per_job_kind():
    from mapo_bench.executors import slurm_parameters

    resources = {"cpus": 4, "time_min": 60, "partition": "cpu", "train": {"gpus": 4, "mem_gb": 64, "partition": "gpu"}}
    assert slurm_parameters(resources, "train") == {"cpus_per_task": 4, "timeout_min": 60, "slurm_partition": "gpu",
                                                    "gpus_per_node": 4, "mem_gb": 64}
    assert slurm_parameters(resources, "eval") == {"cpus_per_task": 4, "timeout_min": 60, "slurm_partition": "cpu"}
    assert slurm_parameters({}, "eval") == {"timeout_min": 720}  # not submitit's 5-minute default
    with pytest.raises(MapoBenchError, match=r"resources: unknown key\(s\) gpu; valid: gpus, cpus"):
        slurm_parameters({"train": {"gpu": 2}}, "train")


def test_the_generated_sbatch_file_carries_the_pipeline_resources(tmp_path):
    pytest.importorskip("submitit")
    from mapo_bench.executors import sbatch_preview

    text = sbatch_preview({"cpus": 8, "time_min": 120, "train": {"gpus": 2, "mem_gb": 48, "partition": "a100",
                                                                 "account": "lab"}}, "train", tmp_path)
    lines = set(text.splitlines())
    for expected in ("#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=48GB",
                     "#SBATCH --time=120", "#SBATCH --partition=a100", "#SBATCH --account=lab",
                     "#SBATCH --job-name=train"):
        assert expected in lines, text
    assert "#SBATCH --gpus-per-node=2" not in sbatch_preview({"train": {"gpus": 2}}, "eval", tmp_path)


def test_several_gpus_run_the_job_entry_under_accelerate():
    from mapo_bench.executors import accelerate_command

    command = accelerate_command(4, ["run", "p.yaml", "--out", "runs/x", "--job", "train:a:mapo:default:s0"])
    assert command[1:6] == ["-m", "accelerate.commands.launch", "--num_processes", "4", "-m"]
    assert command[6:] == ["mapo_bench", "run", "p.yaml", "--out", "runs/x", "--job", "train:a:mapo:default:s0"]


def test_an_unknown_executor_or_a_missing_extra_is_one_line(monkeypatch, tmp_path):
    import builtins

    from mapo_bench.executors import RayExecutor, make_executor

    with pytest.raises(MapoBenchError, match=r"--executor 'slrum': unknown \(did you mean 'slurm'\?\)"):
        make_executor("slrum", 1, None)
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(MapoBenchError, match=r"--executor ray needs ray: pip install 'mapo-bench\[ray\]'"):
        RayExecutor(2)


def test_a_restarted_driver_reattaches_to_a_submitted_job(tmp_path, monkeypatch):
    """A job submitted by a driver that then died is picked up from its record by the next driver (which does
    not submit it again); a record of a job that left nothing behind is resubmitted."""
    pytest.importorskip("submitit")
    from mapo_bench.executors import SlurmExecutor

    monkeypatch.setenv("MAPO_BENCH_SUBMITIT_CLUSTER", "local")
    first = SlurmExecutor(tmp_path, {})
    future = first.submit("job:a", "eval", str(tmp_path / "missing.yaml"))  # fails inside the job: fine here
    with pytest.raises(Exception):  # noqa: B017 - submitit wraps the job's own error
        future.result(timeout=120)
    record = first.record_path("job:a")
    saved = json.loads(record.read_text())
    assert saved["cluster"] == "local" and saved["verb"] == "eval"
    second = SlurmExecutor(tmp_path, {})
    job = second.reattach(record)
    assert job is not None and str(job.job_id) == saved["job_id"]  # finished: its result (an error) is read
    job.paths.result_pickle.unlink()
    assert second.reattach(record) is None  # no process and no result: submit again


@pytest.mark.slow
def test_the_tiny_pipeline_on_submitit_gives_the_local_results(tiny_run_reference, tmp_path):  # noqa: F811
    pytest.importorskip("submitit")
    pipeline, reference = tiny_run_reference
    out = tmp_path / "run"
    os.environ["MAPO_BENCH_SUBMITIT_CLUSTER"] = "local"
    try:
        result = cli(["run", str(pipeline), "--out", str(out), "--executor", "slurm", "--workers", "2"])
    finally:
        os.environ.pop("MAPO_BENCH_SUBMITIT_CLUSTER")
    assert result.returncode == 0, result.stderr[-2000:]
    assert comparable_results(out) == comparable_results(reference)
    assert len(list((out / "slurm" / "submitted").glob("*.json"))) == len(list((out / "state").glob("*.json")))


@pytest.mark.slow
def test_the_tiny_pipeline_on_a_local_ray_cluster_gives_the_local_results(tiny_run_reference, tmp_path):  # noqa: F811
    pytest.importorskip("ray")
    pipeline, reference = tiny_run_reference
    out = tmp_path / "run"
    result = cli(["run", str(pipeline), "--out", str(out), "--executor", "ray", "--workers", "2"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert comparable_results(out) == comparable_results(reference)


@pytest.mark.slow
def test_a_ray_worker_killed_mid_job_is_retried_and_the_run_matches(tiny_run_reference, tmp_path):  # noqa: F811
    """SIGKILL of the worker process running a training job (once, marked by a file): Ray runs the task
    again, the stage resumes from its checkpoint, and results.json equals the uninterrupted run's."""
    pytest.importorskip("ray")
    pipeline, reference = tiny_run_reference
    out = tmp_path / "run"
    once = tmp_path / "killed-once"
    os.environ["MAPO_BENCH_FAULT_ONCE"] = str(once)
    try:
        result = cli(["run", str(pipeline), "--out", str(out), "--executor", "ray", "--workers", "2"],
                     "train:after-step")
    finally:
        os.environ.pop("MAPO_BENCH_FAULT_ONCE")
    assert once.is_file(), "no worker was killed"
    assert result.returncode == 0, result.stderr[-2000:]
    assert comparable_results(out) == comparable_results(reference)


def _pool_workers(driver) -> list:
    return [p for p in driver.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]


def _running(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_until(condition, seconds: float) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_the_pool_workers_end_with_the_driver(tmp_path, signal_name):
    """A `mapo-bench run --workers 2` driver stopped by SIGTERM (kill, scancel) or SIGKILL (OOM killer): no
    pool worker runs on, orphaned, writing into the run folder a resumed run works in. SIGTERM stops the
    run as Ctrl-C does (exit 143, the one-line message); after SIGKILL each worker sees its driver gone."""
    import signal
    import subprocess
    import sys

    psutil = pytest.importorskip("psutil")
    from tiny_pipeline import write_tiny_pipeline

    from mapo_bench.cli import INTERRUPTED

    _, pipeline = write_tiny_pipeline(tmp_path)
    env = {**os.environ, "MAPO_BENCH_QUIET": "1", "MAPO_BENCH_THREADS": "1"}
    log = tmp_path / "stderr.txt"  # a file, not a pipe: an orphaned worker would hold a pipe open
    with open(log, "w") as stderr_file:
        run = subprocess.Popen([sys.executable, "-m", "mapo_bench", "run", str(pipeline), "--workers", "2",
                                "--out", str(tmp_path / "run")], env=env, stderr=stderr_file, start_new_session=True)
    driver = psutil.Process(run.pid)
    _wait_until(lambda: len(_pool_workers(driver)) == 2 or run.poll() is not None, 120)
    workers = _pool_workers(driver)
    assert len(workers) == 2, "the pool's two workers never started"
    run.send_signal(getattr(signal, signal_name))
    run.wait(timeout=60)
    stderr = log.read_text()
    _wait_until(lambda: not any(_running(w) for w in workers), 30)
    try:
        assert not any(_running(w) for w in workers), f"pool workers outlived the driver's {signal_name}"
    finally:
        for worker in workers:
            if _running(worker):
                worker.kill()
    if signal_name == "SIGTERM":
        assert run.returncode == 143, stderr[-2000:]
        assert stderr.strip().splitlines()[-1] == INTERRUPTED
    else:
        assert run.returncode == -9
