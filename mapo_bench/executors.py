"""Where ``mapo-bench run`` executes its jobs: this machine's process pool, a Ray cluster, or Slurm.

The runner plans, checks markers, selects and reports; an executor only runs one stage from its config
file (``runner.run_pipeline_job(verb, path)``, the ``--job`` entry's body) somewhere and hands back a
``concurrent.futures.Future`` of its wall seconds, so the runner waits on every executor alike. Stages
are crash-safe and resume from their own checkpoints, so a job that dies is simply run again.

- ``local``: a spawn process pool of ``--workers`` processes (the default).
- ``ray``: one Ray task per job (``pip install 'mapo-bench[ray]'``); a local cluster of ``--workers`` CPUs
  started by the command, or an existing one (``--ray-address``). A task whose worker dies is retried by
  Ray (``max_retries``); the stage resumes where its files say it stopped.
- ``slurm``: one Slurm job per plan job through submitit (``pip install 'mapo-bench[slurm]'``), with
  resources from the pipeline's ``resources:`` block; a job asking for several GPUs runs the stage under
  ``accelerate launch``. Each submission is recorded under ``slurm/submitted/`` so a restarted driver reattaches to
  jobs still queued or running instead of submitting them twice. ``MAPO_BENCH_SUBMITIT_CLUSTER=local``
  (or ``debug``) runs the same code through submitit's local executor, for tests and laptops.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mapo_bench.errors import MapoBenchError

EXECUTORS = ("local", "ray", "slurm")
SUBMITIT_CLUSTER_VAR = "MAPO_BENCH_SUBMITIT_CLUSTER"
RAY_RETRIES = 3  # a job whose Ray worker dies is run again this many times (it resumes from its files)
DEFAULT_TIME_MIN = 720  # a job's time limit when the pipeline gives none (submitit's own default is 5 minutes)
LIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


def missing_extra(module: str, extra: str) -> MapoBenchError:
    return MapoBenchError(f"--executor {extra} needs {module}: pip install 'mapo-bench[{extra}]'")


class LocalPool:
    """``workers`` spawned processes on this machine (spawn: no CUDA or thread state leaks into a job)."""

    slots = None  # the pool queues what it cannot start yet

    def __init__(self, workers: int) -> None:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        self.pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=end_with_driver,
                                        initargs=(os.getpid(),))

    def submit(self, job_id: str, verb: str, config_path: str) -> Future:
        from mapo_bench.runner import run_pipeline_job

        return self.pool.submit(run_pipeline_job, verb, config_path)

    def stop(self) -> None:
        """Terminate the workers now instead of letting in-flight jobs run on (a resumed run would race
        them); ``terminate_workers`` from Python 3.14, the executor's process table before that."""
        terminate = getattr(self.pool, "terminate_workers", None)
        if callable(terminate):
            terminate()
            return
        for process in list(getattr(self.pool, "_processes", {}).values()):
            process.terminate()
        for process in list(getattr(self.pool, "_processes", {}).values()):
            process.join(timeout=10)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


DRIVER_POLL_S = 1.0  # how often a pool worker checks that the driver is still alive


def end_with_driver(driver_pid: int) -> None:
    """Pool initializer: the worker ends within a second of the driver's death (SIGKILL, OOM killer).

    Without it a worker runs its job on, orphaned, and writes into the run folder while the resumed run
    (or a user's ``rm -rf``) works there. Ending mid-job loses nothing finished: stages are crash-safe.
    """

    def watch() -> None:
        while os.getppid() == driver_pid:
            time.sleep(DRIVER_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="mapo-bench-driver-watch", daemon=True).start()


class RayExecutor:
    """One Ray task per job on a local cluster of ``workers`` CPUs, or on the cluster at ``address``."""

    slots = None  # Ray queues tasks until their resources are free

    def __init__(self, workers: int, address: str | None = None, cpus_per_job: float = 1.0,
                 gpus_per_job: float = 0.0) -> None:
        try:
            import ray
        except ImportError:
            raise missing_extra("ray", "ray") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            options: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
            ray.init(**options, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     runtime_env={"env_vars": _forwarded_env()})
        from mapo_bench.runner import run_pipeline_job

        self.task = ray.remote(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=RAY_RETRIES,
                               retry_exceptions=False)(run_pipeline_job)
        self.refs: list[Any] = []

    def submit(self, job_id: str, verb: str, config_path: str) -> Future:
        ref = self.task.options(name=job_id).remote(verb, config_path)
        self.refs.append(ref)
        return ref.future()

    def stop(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def _forwarded_env() -> dict[str, str]:
    """The mapo-bench settings a job must see on a worker (cache, model root, threads, quiet, faults)."""
    return {k: v for k, v in os.environ.items() if k.startswith("MAPO_BENCH_") or k in ("HF_HOME", "HF_HUB_OFFLINE")}


class SlurmExecutor:
    """One Slurm job per plan job through submitit; submissions recorded in ``slurm/submitted`` for reattaching."""

    def __init__(self, run_dir: Path, resources: dict[str, Any], job_command: Any = None, marker_path: Any = None,
                 cluster: str | None = None, workers: int = 1) -> None:
        try:
            import submitit
        except ImportError:
            raise missing_extra("submitit", "slurm") from None
        self.submitit = submitit
        self.cluster = cluster or os.environ.get(SUBMITIT_CLUSTER_VAR) or "slurm"
        # Slurm queues jobs itself; submitit's local executor starts every job it is given at once
        self.slots = None if self.cluster == "slurm" else max(1, workers)
        self.folder = run_dir / "slurm"
        self.resources = resources
        self.job_command = job_command  # job id -> the `mapo-bench run P --job ID` argument list, or None
        self.marker_path = marker_path  # job id -> the marker that `--job` writes (the runner's)
        try:
            self.executor = submitit.AutoExecutor(folder=str(self.folder), cluster=self.cluster)
        except RuntimeError as exc:  # no sbatch / srun on this machine
            raise MapoBenchError(f"--executor slurm: {exc} (set {SUBMITIT_CLUSTER_VAR}=local to try it here)") from None
        self.waiters = ThreadPoolExecutor(max_workers=64, thread_name_prefix="slurm-wait")
        self.jobs: list[Any] = []

    def submit(self, job_id: str, verb: str, config_path: str) -> Future:
        record = self.record_path(job_id)
        job = self.reattach(record)
        if job is None:
            job = self._submit(job_id, verb, config_path)
            from mapo_bench.io import write_json_atomic

            write_json_atomic(record, {"job_id": str(job.job_id), "cluster": self.cluster, "folder": str(self.folder),
                                       "verb": verb, "config": config_path})
        self.jobs.append(job)
        return self.waiters.submit(job.result)

    def _submit(self, job_id: str, verb: str, config_path: str) -> Any:
        params = slurm_parameters(self.resources, verb)
        self.executor.update_parameters(name=job_id, **params)
        gpus = int(params.get("gpus_per_node", 0) or 0)
        if gpus > 1:  # several GPUs: `mapo-bench run P --job ID` under accelerate launch (it writes the marker)
            if self.job_command is None or self.marker_path is None:
                raise MapoBenchError(f"resources: {verb} asks for {gpus} GPUs, which needs the pipeline file "
                                     "(run it with mapo-bench run PIPELINE.yaml)")
            return self.executor.submit(launched_job, accelerate_command(gpus, self.job_command(job_id)),
                                        str(self.marker_path(job_id)))
        from mapo_bench.runner import run_pipeline_job

        return self.executor.submit(run_pipeline_job, verb, config_path)

    def record_path(self, job_id: str) -> Path:
        """Where the submission of ``job_id`` is recorded (beside submitit's files, not among the markers)."""
        from mapo_bench.runner import job_file_name

        return self.folder / "submitted" / f"{job_file_name(job_id)}.json"

    def reattach(self, record: Path) -> Any | None:
        """The job of an earlier driver, if it is still queued or running, or finished with a result."""
        if not record.is_file():
            return None
        try:
            saved = json.loads(record.read_text())
        except ValueError:
            return None
        if saved.get("cluster") != self.cluster or saved.get("folder") != str(self.folder):
            return None
        job = self.executor._executor.job_class(folder=self.folder, job_id=saved["job_id"])
        state = str(job.state).upper()
        finished = job.paths.result_pickle.is_file()
        if finished or any(state.startswith(s) for s in LIVE_SLURM_STATES):
            print(f"reattached to {self.cluster} job {saved['job_id']} ({record.name})", file=sys.stderr)
            return job
        return None

    def stop(self) -> None:
        for job in self.jobs:
            if not job.done():
                job.cancel(check=False)

    def close(self) -> None:
        self.waiters.shutdown(wait=False, cancel_futures=True)


def slurm_parameters(resources: dict[str, Any], verb: str) -> dict[str, Any]:
    """submitit's parameter names from a pipeline's ``resources`` (defaults, then the job kind's block):
    ``gpus``, ``cpus``, ``mem_gb``, ``time_min``, ``partition``, ``account``, ``constraint``."""
    merged = {"time_min": DEFAULT_TIME_MIN, **{k: v for k, v in resources.items() if not isinstance(v, dict)},
              **(resources.get(verb) or {})}
    names = {"gpus": "gpus_per_node", "cpus": "cpus_per_task", "mem_gb": "mem_gb", "time_min": "timeout_min",
             "partition": "slurm_partition", "account": "slurm_account", "constraint": "slurm_constraint"}
    unknown = sorted(set(merged) - set(names))
    if unknown:
        raise MapoBenchError(f"resources: unknown key(s) {', '.join(unknown)}; valid: {', '.join(names)} "
                             f"(and a block per job kind: build, mismatch, train, sample, eval)")
    return {names[k]: v for k, v in merged.items() if v is not None}


def sbatch_preview(resources: dict[str, Any], verb: str, folder: Path) -> str:
    """The sbatch file submitit would write for a job of kind ``verb`` (readable without a Slurm cluster)."""
    try:
        from submitit.slurm.slurm import _make_sbatch_string
    except ImportError:
        raise missing_extra("submitit", "slurm") from None
    params = slurm_parameters(resources, verb)
    sbatch = {"time": params.pop("timeout_min", 5), **({"mem": f"{params.pop('mem_gb')}GB"} if "mem_gb" in params else {})}
    sbatch.update({k.removeprefix("slurm_"): v for k, v in params.items()})
    return _make_sbatch_string(command="python -u -m submitit.core._submit FOLDER", folder=str(folder), job_name=verb,
                               **sbatch)


def accelerate_command(gpus: int, job_args: list[str]) -> list[str]:
    """``accelerate launch`` of ``mapo-bench JOB_ARGS`` on ``gpus`` processes (every rank shares the job)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus), "-m", "mapo_bench",
            *job_args]


def launched_job(command: list[str], marker: str) -> float:
    """Run ``command`` (a `--job` under accelerate), then its wall seconds from the marker it wrote."""
    import subprocess

    subprocess.run(command, check=True)
    return float(json.loads(Path(marker).read_text())["wall_s"])


def make_executor(kind: str, workers: int, runner: Any, ray_address: str | None = None) -> Any | None:
    """The executor ``kind`` (None: run jobs one by one in this process, ``local`` with one worker)."""
    if kind not in EXECUTORS:
        from mapo_bench.registry import suggest

        raise MapoBenchError(f"--executor {kind!r}: unknown{suggest(kind, list(EXECUTORS))}; valid: {', '.join(EXECUTORS)}")
    if kind == "local":
        return LocalPool(workers) if workers > 1 else None
    resources = runner.spec.resources
    if kind == "ray":
        return RayExecutor(workers, ray_address, cpus_per_job=float(resources.get("cpus", 1)),
                           gpus_per_job=float(resources.get("gpus", 0) or 0))
    job_command = None
    if runner.pipeline_path is not None:
        def job_command(job_id: str) -> list[str]:
            return ["run", str(runner.pipeline_path), "--out", str(runner.run_dir), "--job", job_id]
    return SlurmExecutor(runner.run_dir, resources, job_command, runner.marker_path, workers=workers)

