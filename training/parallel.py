"""Data preparation on every CPU core: ``map_processes(fn, jobs)``.

``make demo`` spends minutes before and between its training loops on work that runs on one core at a
time: painting hybrids, finding the threshold lungs of each training case for the classifier's slices, the
input profile of every training image. These jobs are independent of each other, so they run in ``workers``
processes (default: one per core), each held to one thread (torch and SimpleITK), so two processes on two
cores do not fight over them. Processes are spawned, not forked: the parent may hold torch's thread pools,
which forked children must not inherit. With one worker (or one job) everything runs here, in order.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any


def _one_thread() -> None:
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def worker_count(n_jobs: int, workers: int | None = None) -> int:
    """How many processes ``map_processes`` uses for ``n_jobs``: ``workers`` (default: the CPU cores), at most
    one per job, at least one."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers={workers}; expected >= 1 (or None for one per CPU core)")
    return max(1, min(workers or os.cpu_count() or 1, n_jobs))


def map_processes(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int | None = None,
                  done: Callable[[int, tuple, Any], None] | None = None) -> list[Any]:
    """``[fn(*job) for job in jobs]``, computed in ``worker_count(len(jobs), workers)`` processes.

    ``fn`` must be importable (a module-level function) and its arguments and result picklable. ``done(i, job,
    result)`` is called here, in the parent, as each job finishes (in finishing order): for progress lines.
    The first job that raises stops the rest and its exception is raised here.
    """
    jobs = list(jobs)
    n = worker_count(len(jobs), workers)
    results: list[Any] = [None] * len(jobs)
    if n == 1:
        for i, job in enumerate(jobs):
            results[i] = fn(*job)
            if done is not None:
                done(i, job, results[i])
        return results
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
        futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        try:
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                if done is not None:
                    done(i, jobs[i], results[i])
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results
