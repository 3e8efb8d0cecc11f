"""Dask clusters for ``covidct batch`` on HPC: SLURM jobs as workers, through dask-jobqueue.

Each SLURM job runs one Dask worker with one task slot (a scan at a time) and books ``cores`` CPUs for
torch's threads; with ``gpus`` it books GPUs and advertises ``--resources GPU=<gpus>``, which the GPU tasks
of ``covidct batch --device cuda`` ask for, so one GPU runs one scan at a time.

    python -m CovidCTAnalysisLib.cohort.clusters --jobs 8 --queue gpu --cores 8 --memory 48GB --gpus 1 \\
        --scheduler-file sched.json &
    covidct batch /data/cohort -o /scratch/cohort --device cuda --scheduler-file sched.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def slurm_cluster(*, cores: int = 8, memory: str = "32GB", gpus: int = 0, queue: str | None = None,
                  account: str | None = None, walltime: str = "04:00:00", **kwargs: Any):
    """A ``dask_jobqueue.SLURMCluster`` whose jobs are single-slot covidct workers (see module docstring)."""
    from dask_jobqueue import SLURMCluster

    extra = [f"--gres=gpu:{gpus}"] if gpus else []
    worker_args = ["--resources", f"GPU={gpus}"] if gpus else []
    return SLURMCluster(cores=1, processes=1, job_cpu=cores, memory=memory, queue=queue, account=account,
                        walltime=walltime, job_extra_directives=extra, worker_extra_args=worker_args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Start a SLURM-backed Dask cluster for covidct batch; runs until "
                                            "interrupted. Workers: one SLURM job each.")
    p.add_argument("--jobs", type=int, required=True, help="SLURM jobs (= Dask workers) to start")
    p.add_argument("--cores", type=int, default=8, help="CPUs booked per job (torch threads)")
    p.add_argument("--memory", default="32GB", help="memory per job (also the worker's memory limit)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs per job (workers advertise --resources GPU=N)")
    p.add_argument("--queue", help="SLURM partition")
    p.add_argument("--account", help="SLURM account")
    p.add_argument("--walltime", default="04:00:00")
    p.add_argument("--scheduler-file", required=True, help="where to write the scheduler's address")
    p.add_argument("--print-job-script", action="store_true", help="print the job script and exit")
    a = p.parse_args(argv)
    cluster = slurm_cluster(cores=a.cores, memory=a.memory, gpus=a.gpus, queue=a.queue, account=a.account,
                            walltime=a.walltime)
    if a.print_job_script:
        print(cluster.job_script())
        cluster.close()
        return 0
    Path(a.scheduler_file).write_text(json.dumps({"type": "Scheduler", "address": cluster.scheduler_address}))
    cluster.scale(jobs=a.jobs)
    print(f"scheduler {cluster.scheduler_address} (written to {a.scheduler_file}); {a.jobs} SLURM jobs asked for. "
          "Ctrl-C stops the cluster.", flush=True)
    try:
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        cluster.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
