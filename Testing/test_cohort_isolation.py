"""``covidct batch`` survives what kills processes: SIGTERM to the driver (then resume), SIGKILL to a Dask
worker mid-scan, a scan that crashes its worker every time, one that outgrows the memory limit, one past
``--timeout``, a corrupt file and a non-CT series; and the SLURM job script that ``cohort.clusters`` generates.

Timing is controlled by the stand-in analyzer of ``cohort_standins.py`` (``--analyzer``), run by the real
CLI in a subprocess, so worker processes import it from ``PYTHONPATH``.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from CovidCTAnalysisLib.cohort.runner import read_status

TESTING = Path(__file__).resolve().parent
STANDIN = "cohort_standins:fake_analyze"


def make_inputs(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.nii.gz").write_bytes(b"stand-in")
    return folder


def batch_cmd(inp: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "CovidCTAnalysisLib.cli", "batch", str(inp), "-o", str(out), "--method", "threshold",
            "--analyzer", STANDIN, "--progress", "json", *extra]


def env_with(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTING), env.get("PYTHONPATH", "")])
    env["COVIDCT_TEST_ANALYZER_LOG"] = str(tmp_path / "calls.log")
    env.update(extra)
    return env


def summary_ids(out: Path) -> list[str]:
    with open(out / "summary.csv", newline="") as f:
        return [r["scan_id"] for r in csv.DictReader(f)]


def calls(tmp_path: Path) -> list[tuple[str, int]]:
    path = tmp_path / "calls.log"
    if not path.is_file():
        return []
    return [(line.split()[0], int(line.split()[1])) for line in path.read_text().splitlines() if line.strip()]


def test_sigterm_stops_the_driver_and_a_rerun_does_only_the_rest(tmp_path):
    names = [f"s{i}" for i in range(8)]
    inp, out = make_inputs(tmp_path / "in", names), tmp_path / "out"
    env = env_with(tmp_path, COVIDCT_TEST_ANALYZER_DELAY="0.6")
    proc = subprocess.Popen(batch_cmd(inp, out, "--workers", "1"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    finished = 0
    for line in proc.stdout:
        if json.loads(line).get("event") == "scan":
            finished += 1
            if finished == 3:
                proc.send_signal(signal.SIGTERM)
                break
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    done = {n for n in names if (read_status(out, n) or {}).get("status") == "ok"}
    assert 3 <= len(done) < len(names)
    assert len(summary_ids(out)) == len(done)  # the summary was written for what finished
    first_calls = len(calls(tmp_path))

    rerun = subprocess.run(batch_cmd(inp, out, "--workers", "1"), env=env_with(tmp_path), capture_output=True,
                           text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    again = [name.removesuffix(".nii.gz") for name, _ in calls(tmp_path)[first_calls:]]
    assert sorted(again) == sorted(set(names) - done)  # only the remaining scans ran
    assert summary_ids(out) == sorted(names)  # one row per scan, no duplicates
    assert not [p for p in (out / "scans").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_a_dask_worker_killed_mid_scan_is_retried_and_marked(tmp_path):
    pytest.importorskip("distributed")
    names = ["a", "b", "c", "d"]
    inp, out = make_inputs(tmp_path / "in", names), tmp_path / "out"
    proc = subprocess.Popen(batch_cmd(inp, out, "--workers", "2"), env=env_with(tmp_path, COVIDCT_TEST_ANALYZER_DELAY="3"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not calls(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    victim, pid = calls(tmp_path)[0]
    os.kill(pid, signal.SIGKILL)  # a worker process in the middle of its scan
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    victim_id = victim.removesuffix(".nii.gz")
    for name in names:
        status = read_status(out, name)
        assert status["status"] == "ok", status
        assert status["retried"] == (name == victim_id) and status["attempts"] == (2 if name == victim_id else 1)
    assert summary_ids(out) == names


@pytest.mark.slow
def test_a_crashing_scan_a_memory_hog_and_a_timeout_fail_alone(tmp_path):
    pytest.importorskip("distributed")
    names = ["a", "crash_me", "hog_me", "b", "sleepy", "c"]
    inp, out = make_inputs(tmp_path / "in", names), tmp_path / "out"
    run = subprocess.run(batch_cmd(inp, out, "--workers", "2", "--memory-limit", "700MiB", "--max-attempts", "2",
                                   "--timeout", "10"),
                         env=env_with(tmp_path), capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-3000:]  # not every scan succeeded
    crash, hog = read_status(out, "crash_me"), read_status(out, "hog_me")
    # its retry may be sent to the other worker just as that one dies of the hog or the timeout, and Dask charges
    # that death too: 1 or 2 real attempts, never more than --max-attempts
    ran = [name for name, _ in calls(tmp_path) if name == "crash_me.nii.gz"]
    assert crash["status"] == "failed" and crash["attempts"] == len(ran) and 1 <= len(ran) <= 2
    assert crash["error"].startswith(f"the worker process died while analysing this scan ({len(ran)} attempt(s)")
    assert hog["status"] == "failed" and hog["error"].startswith("killed for memory: the worker used")
    sleepy = read_status(out, "sleepy")
    assert sleepy["status"] == "failed" and sleepy["error"] == "timed out: still running after 10 s (--timeout)"
    assert [(read_status(out, n) or {}).get("status") for n in ("a", "b", "c")] == ["ok"] * 3
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert events[-1] == {"event": "done", "ok": 3, "failed": 3, "summary": str(out / "summary.csv"),
                          "report": str(out / "report.html")}
    assert summary_ids(out) == sorted(names)
    html = (out / "report.html").read_text()
    assert "killed for memory" in html and "timed out" in html and "Failures (3)" in html


def test_a_corrupt_file_and_a_non_ct_series_fail_with_the_loaders_message(tmp_path):
    import numpy as np
    import SimpleITK as sitk
    from CovidCTAnalysisLib.cohort.batch import run_batch
    from CovidCTAnalysisLib.cohort.engines import EngineOptions
    from CovidCTAnalysisLib.cohort.settings import AnalysisSettings
    from CovidCTAnalysisLib.errors import InputError
    from CovidCTAnalysisLib.loading.load import load_ct
    from CovidCTAnalysisLib.phantom.write_dicom import write_dicom_series

    inp = tmp_path / "in"
    image = sitk.GetImageFromArray(np.full((8, 32, 32), -1000, np.int16))
    write_dicom_series(image, inp / "mr_series", modality="MR")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((40, 64, 64), np.int16)), str(inp / "cut.nii.gz"))
    data = (inp / "cut.nii.gz").read_bytes()
    (inp / "cut.nii.gz").write_bytes(data[: len(data) // 2])  # truncated
    outcome = run_batch([str(inp)], tmp_path / "out", AnalysisSettings(method="threshold"), EngineOptions(workers=1))
    assert (outcome.ok, outcome.failed, outcome.exit_code) == (0, 2, 1)
    for scan_id, path in (("cut", inp / "cut.nii.gz"), ("mr_series", inp / "mr_series")):
        with pytest.raises(InputError) as refused:
            load_ct(path)
        status = read_status(tmp_path / "out", scan_id)
        assert status["error"] == " ".join(str(refused.value).split()) and status["error_type"] == "InputError"
        assert status["exit_code"] == InputError.exit_code
    assert "no CT series" in read_status(tmp_path / "out", "mr_series")["error"]


@pytest.mark.slow  # importing dask-jobqueue and starting its scheduler: ~25 s on the busy 2-core machine
def test_the_slurm_job_script_books_one_gpu_and_one_scan_slot_per_job(tmp_path):
    pytest.importorskip("dask_jobqueue")
    from CovidCTAnalysisLib.cohort.clusters import slurm_cluster

    cluster = slurm_cluster(cores=8, memory="48GB", gpus=1, queue="gpu", account="lab42", walltime="02:00:00",
                            log_directory=str(tmp_path))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    for directive in ("#SBATCH -p gpu", "#SBATCH -A lab42", "#SBATCH --cpus-per-task=8", "#SBATCH -t 02:00:00",
                      "#SBATCH --gres=gpu:1"):
        assert directive in lines, script
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert "--nthreads 1" in worker and "--nworkers" not in worker  # one worker, one scan at a time per job
    assert "--resources GPU=1" in worker  # what covidct batch --device cuda asks for
    assert "--memory-limit 44.70GiB" in worker  # 48 GB, the job's memory, is the worker's limit
