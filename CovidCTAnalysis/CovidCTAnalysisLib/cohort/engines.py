"""Where the scans run: in this process, or on Dask distributed (a local cluster or an existing one).

Both engines take the same scans and yield each scan's status as it finishes. In-process, a scan
that raises becomes a failed row; only worker processes can also survive crashes, timeouts and memory
overruns. On Dask each task is ``runner.run_scan`` in a worker process (one thread, its share of the
cores); a worker that dies is restarted by its nanny and the scheduler retries the scan up to
``max_attempts`` times, after which the driver records it as failed with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from CovidCTAnalysisLib.cohort.discover import Scan
from CovidCTAnalysisLib.cohort.runner import describe_error, failed_status, read_attempts, run_scan, write_status
from CovidCTAnalysisLib.cohort.settings import AnalysisSettings
from CovidCTAnalysisLib.errors import InputError


@dataclass(frozen=True)
class EngineOptions:
    workers: int = 1
    scheduler: str | None = None  # tcp://HOST:PORT
    scheduler_file: str | None = None
    memory_limit: str | None = None  # per worker, e.g. "4GiB"; None: Dask's share of the machine
    timeout_s: float | None = None
    max_attempts: int = 2  # a scan whose worker dies is tried this many times in all
    threads: int = 0  # per worker; 0: cores // workers on a local cluster, the worker's default elsewhere
    gpu: bool = False  # tasks ask for resources={"GPU": 1}

    @property
    def distributed(self) -> bool:
        return bool(self.scheduler or self.scheduler_file or self.workers > 1)


def dask_available() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def local_threads(workers: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def run_in_process(scans: list[Scan], out: Path, settings: AnalysisSettings, opts: EngineOptions
                   ) -> Iterator[dict[str, Any]]:
    threads = opts.threads or local_threads(1)
    for scan in scans:
        yield run_scan(scan.scan_id, scan.path, str(out), settings, threads=threads)


def dask_task(scan_id: str, path: str, out: str, settings: AnalysisSettings, threads: int,
              timeout_s: float | None, run_id: str, gpu_by_worker_name: bool = False) -> dict[str, Any]:
    """The Dask task: ``run_scan`` with the watchdog armed at this worker's memory limit. On a local GPU cluster
    (one worker per GPU, named 0..N-1) worker N uses GPU N."""
    from distributed import get_worker

    worker = get_worker()
    if gpu_by_worker_name and isinstance(worker.name, int):
        import torch

        torch.cuda.set_device(worker.name % max(1, torch.cuda.device_count()))
    limit = worker.memory_manager.memory_limit
    return run_scan(scan_id, path, out, settings, threads=threads, timeout_s=timeout_s,
                    memory_limit=int(limit) if limit else None, run_id=run_id)


def dask_config(max_attempts: int) -> dict[str, Any]:
    """Scheduler/worker settings for a local cluster: retries, and memory handled by the watchdog (no spilling,
    no pausing: the results are small, and a paused worker would sit on its scan)."""
    return {"distributed.scheduler.allowed-failures": max(0, max_attempts - 1),
            "distributed.worker.memory.target": False, "distributed.worker.memory.spill": False,
            "distributed.worker.memory.pause": False, "distributed.worker.memory.terminate": 0.98}


def local_gpu_count() -> int:
    """CUDA GPUs visible here; refuses a local GPU cluster without one."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise InputError("--device cuda (or --gpu-resource) on a local cluster, but no CUDA GPU is visible here; "
                         "use --device cpu, or --scheduler with GPU workers started with --resources GPU=1")
    return n


@contextmanager
def dask_client(opts: EngineOptions):
    """A client of the named scheduler, or of a new ``LocalCluster`` (processes, one thread each)."""
    if not dask_available():
        raise InputError("--scheduler/--scheduler-file need Dask; install it with pip install "
                         "'covidct-analysis[dask]' (or run without them: the scans then run in this process)")
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(dask_config(opts.max_attempts)):
        if opts.scheduler or opts.scheduler_file:
            with Client(opts.scheduler, scheduler_file=opts.scheduler_file, timeout="60s") as client:
                yield client
            return
        kwargs: dict[str, Any] = {"n_workers": opts.workers, "threads_per_worker": 1, "processes": True,
                                  "dashboard_address": None}
        if opts.memory_limit:
            kwargs["memory_limit"] = opts.memory_limit
        if opts.gpu:  # one worker per visible GPU, each with one GPU slot
            kwargs.update(resources={"GPU": 1}, n_workers=min(opts.workers, local_gpu_count()))
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            yield client


def run_on_dask(scans: list[Scan], out: Path, settings: AnalysisSettings, opts: EngineOptions, client
                ) -> Iterator[dict[str, Any]]:
    """Scans go out no faster than the cluster has task slots, so a worker holds only the scan it runs: Dask
    charges a dead worker's death to every task assigned to it, and a queued scan must not pay for another's
    crash. The slots are counted again after each scan, so workers that join later (SLURM jobs) are used."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    local = not (opts.scheduler or opts.scheduler_file)
    threads = opts.threads or (local_threads(opts.workers) if local else 0)
    run = uuid.uuid4().hex[:8]
    todo = iter(scans)
    in_flight: dict[Any, Scan] = {}
    finished = as_completed()

    def submit_more() -> None:
        slots = max(1, sum(client.nthreads().values()))
        while len(in_flight) < slots:
            scan = next(todo, None)
            if scan is None:
                return
            fut = client.submit(dask_task, scan.scan_id, scan.path, str(out), settings, threads, opts.timeout_s, run,
                                local and opts.gpu, key=f"covidct-{scan.scan_id}-{run}", pure=False,
                                resources={"GPU": 1} if opts.gpu else None)
            in_flight[fut] = scan
            finished.add(fut)

    submit_more()
    for fut in finished:
        scan = in_flight.pop(fut)
        try:
            status = fut.result()
        except KilledWorker:
            status = write_status(out, scan.scan_id, failed_status(scan.scan_id, scan.path, _death_reason(out, scan),
                                                                   "WorkerKilled", None))
        except Exception as e:  # noqa: BLE001 - anything else the task raised is this scan's failure
            status = write_status(out, scan.scan_id, failed_status(scan.scan_id, scan.path, describe_error(e),
                                                                   type(e).__name__, None))
        fut.release()  # its result lives in a worker; a later death of that worker must not re-run the scan
        submit_more()
        yield status


def _death_reason(out: Path, scan: Scan) -> str:
    attempts = read_attempts(out, scan.scan_id)
    killed = [a["killed"] for a in attempts if "killed" in a]
    if killed:
        return killed[-1]
    n = len([a for a in attempts if "start" in a])
    return (f"the worker process died while analysing this scan ({n} attempt(s) started; a crash in native "
            "code, or the process was killed by the system's out-of-memory killer or by a signal)")


def run_scans(scans: list[Scan], out: Path, settings: AnalysisSettings, opts: EngineOptions
              ) -> Iterator[dict[str, Any]]:
    """Statuses of ``scans`` as they finish, on Dask when ``opts.distributed`` and Dask is installed."""
    if not scans:
        return
    if opts.distributed and (dask_available() or opts.scheduler or opts.scheduler_file):
        with dask_client(opts) as client:
            yield from run_on_dask(scans, out, settings, opts, client)
    else:
        yield from run_in_process(scans, out, settings, opts)
