"""Runs that die (issue 13, part 2): signals at each stage, a full disk, unwritable or misplaced output
folders, and two runs into one folder. Afterwards the output folder must be as it was, with no temp
folders or locks left beside it.

The signal tests run the CLI as a subprocess and stop it at a stage with the test-only hook
``COVIDCT_TEST_PAUSE_AT`` (``results.interrupts.pause_point``): the run says on stderr that it waits there,
the test sends the signal. The full matrix (every stage x SIGINT/SIGTERM, model stages too) is slow.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.errors import OutputError
from CovidCTAnalysisLib.results import outputs
from CovidCTAnalysisLib.results.interrupts import PAUSE_ENV, PAUSE_SECONDS_ENV, PAUSED_MARK
from CovidCTAnalysisLib.results.run_lock import LOCK_SUFFIX, output_lock
from test_pipeline_cli import tiny_models  # noqa: F401 - the shared fixture (tiny untrained models)

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "CovidCTAnalysis"
THRESHOLD_STAGES = ("check", "load", "segment", "statistics", "write", "commit")


def _phantom_file(folder: Path, seed: int) -> Path:
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    path = folder / f"ct{seed}.nii.gz"
    sitk.WriteImage(make_phantom("covid", seed, size=(64, 64, 40)).image, str(path))
    return path


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    return _phantom_file(tmp_path_factory.mktemp("ct"), 3)


def _env(pause_at: str | None = None, pause_s: float = 60) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(MODULE_DIR), os.environ.get("PYTHONPATH", "")])}
    env.pop(PAUSE_ENV, None)
    if pause_at:
        env[PAUSE_ENV], env[PAUSE_SECONDS_ENV] = pause_at, str(pause_s)
    return env


def _start(ct: Path, out: Path, *extra: str, pause_at: str | None = None, pause_s: float = 60,
           preexec=None) -> subprocess.Popen:
    def child_setup():  # a harness running in the background may ignore SIGINT; the CLI must see it
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if preexec:
            preexec()

    cmd = [sys.executable, "-m", "CovidCTAnalysisLib.cli", "analyze", str(ct), "-o", str(out), "--method",
           "threshold", "--progress", "json", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(pause_at, pause_s), preexec_fn=child_setup)


def _wait_paused(proc: subprocess.Popen, stage: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line.strip() == f"{PAUSED_MARK} {stage}":
            return
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the run never paused at {stage!r} (exit {proc.poll()})")


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else None


def _leftovers(out: Path) -> list[str]:
    """Our temp folders and lock files beside ``out``."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _stop_at(ct: Path, out: Path, stage: str, signum: int, *extra: str) -> tuple[int, list[dict]]:
    proc = _start(ct, out, *extra, pause_at=stage)
    _wait_paused(proc, stage)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    events = [json.loads(line) for line in stdout.splitlines()]
    assert "Traceback" not in stderr, stderr
    return proc.returncode, events


def _old_outputs(ct: Path, out: Path) -> dict[str, bytes]:
    """A previous run's outputs in ``out`` (of another patient than ``ct``: every file differs) and a user's file."""
    from CovidCTAnalysisLib.pipeline import analyze

    analyze(_phantom_file(out.parent, 4), out, method="threshold")
    (out / "notes.txt").write_text("a file of the user's, never touched")
    return _snapshot(out)


@pytest.mark.parametrize(("stage", "signum"), [
    ("segment", signal.SIGTERM), pytest.param("commit", signal.SIGINT, marks=pytest.mark.slow)])
def test_a_stopped_run_leaves_no_folder_and_no_temp(ct, tmp_path, stage, signum):
    out = tmp_path / "new" / "out"  # parents that the run creates must go again too
    code, events = _stop_at(ct, out, stage, signum)
    assert code == 128 + signum
    assert events[-1]["event"] == "error" and signal.Signals(signum).name in events[-1]["message"]
    assert not (tmp_path / "new").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # (also in the matrix below; the fast set keeps one --force case: the move below)
def test_a_stopped_forced_run_keeps_the_old_outputs(ct, tmp_path):
    out = tmp_path / "out"
    before = _old_outputs(ct, out)
    code, _ = _stop_at(ct, out, "write", signal.SIGTERM, "--force")
    assert code == 128 + signal.SIGTERM
    assert _snapshot(out) == before
    assert _leftovers(out) == []


def test_a_signal_while_moving_in_waits_for_the_move(ct, tmp_path):
    """Stopped halfway through replacing old outputs (--force), the move finishes first: all new, no mix."""
    out = tmp_path / "out"
    before = _old_outputs(ct, out)
    proc = _start(ct, out, "--force", pause_at="commit-move", pause_s=1.5)
    _wait_paused(proc, "commit-move")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    after = _snapshot(out)
    assert set(after) == set(before)
    assert after["notes.txt"] == before["notes.txt"]
    new_report = json.loads(after["report.json"])
    assert all(after[name] != before[name] for name in new_report["files"].values())  # all new, none old
    assert _leftovers(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("stage", THRESHOLD_STAGES)
def test_every_stage_and_signal(ct, tmp_path, stage, signum):
    out = tmp_path / "out"
    before = _old_outputs(ct, out)
    code, _ = _stop_at(ct, out, stage, signum, "--force")
    assert code == 128 + signum
    assert _snapshot(out) == before
    assert _leftovers(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["lungs", "classify", "segment"])
def test_model_stages_stopped_by_sigterm(ct, tmp_path, stage, tiny_models):  # noqa: F811 - the fixture
    """The model path's own stages (tiny untrained models from test_pipeline_cli), with --force."""
    out = tmp_path / "out"
    before = _old_outputs(ct, out)
    proc = _start(ct, out, "--force", "--method", "model", "--segment", "always", "--models-dir", str(tiny_models),
                  pause_at=stage)  # the last --method wins
    _wait_paused(proc, stage)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert _snapshot(out) == before
    assert _leftovers(out) == []


def test_second_run_is_refused_and_a_killed_run_leaves_no_stuck_lock(ct, tmp_path, capsys):
    from CovidCTAnalysisLib.cli.main import main

    out = tmp_path / "out"
    first = _start(ct, out, pause_at="commit")  # all files written into its temp folder, then it waits
    _wait_paused(first, "commit")
    assert (tmp_path / f".out{LOCK_SUFFIX}").is_file()
    code = main(["analyze", str(ct), "-o", str(out), "--method", "threshold", "--progress", "none"])
    err = capsys.readouterr().err
    assert code == OutputError.exit_code
    assert f"in use by process {first.pid}" in err and "Traceback" not in err
    first.kill()  # SIGKILL: no clean-up runs; its lock file and temp folder stay behind
    first.communicate(timeout=60)
    assert any(".tmp-" in name for name in _leftovers(out))
    assert main(["analyze", str(ct), "-o", str(out), "--method", "threshold", "--progress", "none"]) == 0
    assert _leftovers(out) == []  # the stale lock was taken over, the dead run's temp folder removed
    assert (out / "report.json").is_file()


def test_lock_is_released_and_reentrant_after_an_error(tmp_path):
    out = tmp_path / "a" / "out"
    with pytest.raises(RuntimeError), output_lock(out):
        raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()  # the parent the lock created is removed again
    with output_lock(out), pytest.raises(OutputError, match="in use by process"), output_lock(out):
        pass


def test_full_disk_while_writing_leaves_nothing(ct, tmp_path, monkeypatch):
    """ENOSPC injected into the labelmap writer after it wrote half a file: clear error, folder untouched."""
    from CovidCTAnalysisLib.pipeline import analyze

    out = tmp_path / "out"
    before = _old_outputs(ct, out)

    def full_disk(labelmap, path):
        Path(path).write_bytes(b"\x1f\x8b half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(outputs, "write_labelmap", full_disk)
    with pytest.raises(OutputError, match=r"No space left on device \(ENOSPC; \d+ MB free"):
        analyze(ct, out, method="threshold", force=True)
    assert _snapshot(out) == before
    assert _leftovers(out) == []


def test_a_write_limit_hit_by_the_real_writers_is_a_clear_error(ct, tmp_path):
    """RLIMIT_FSIZE makes the kernel fail the real writers' write() (EFBIG), as a full disk fails it."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))

    out = tmp_path / "out"
    proc = _start(ct, out, preexec=limit_file_size)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == OutputError.exit_code, stderr
    assert "File too large" in stderr and "nothing was written" in stderr and "Traceback" not in stderr
    assert json.loads(stdout.splitlines()[-1])["event"] == "error"
    assert list(tmp_path.iterdir()) == []


def _unwritable_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    folder = Path("/proc/self")  # root writes anywhere a mode allows; procfs refuses new files even to root
    try:
        outputs._probe_writable(folder)
    except OutputError:
        return folder
    pytest.skip("no folder here refuses writes to this user")


def test_unwritable_output_folder_is_refused_up_front(ct, tmp_path, capsys):
    from CovidCTAnalysisLib.cli.main import main

    folder = _unwritable_folder(tmp_path)
    code = main(["analyze", str(ct), "-o", str(folder / "out"), "--method", "threshold", "--progress", "none"])
    err = capsys.readouterr().err
    assert code == OutputError.exit_code
    assert f"cannot write into {folder.resolve()}" in err and "--progress" not in err
    assert not (folder / "out").exists()


def test_output_inside_the_input_dicom_folder_is_refused(tmp_path, capsys):
    from CovidCTAnalysisLib.cli.main import main
    from CovidCTAnalysisLib.phantom.generator import make_phantom
    from CovidCTAnalysisLib.phantom.write_dicom import write_dicom_series

    dicom = tmp_path / "dicom"
    write_dicom_series(make_phantom("normal", 1, size=(48, 48, 24)).image, dicom)
    files_before = sorted(p.name for p in dicom.iterdir())
    code = main(["analyze", str(dicom), "-o", str(dicom / "results"), "--method", "threshold",
                 "--progress", "none"])
    err = capsys.readouterr().err
    assert code == OutputError.exit_code
    assert "lies inside the input folder" in err
    assert sorted(p.name for p in dicom.iterdir()) == files_before


def test_the_output_folder_gets_the_usual_mode_not_the_temp_folders(tmp_path):
    import stat

    mask = os.umask(0o027)
    try:
        with outputs.atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "report.json").write_text("{}")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750
