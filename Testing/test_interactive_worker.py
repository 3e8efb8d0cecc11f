"""The persistent refine worker (``python -m CovidCTAnalysisLib.interactive.worker``) as a real subprocess with a
tiny interactive model trained by ``training.train_interactive``: a click changes only the lesion label inside its
ROI, refusals leave the labelmap file untouched and the worker alive, later clicks do not pay the start-up again,
and shutdown exits with 0."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import LESION

REPO = Path(__file__).resolve().parents[1]


def lps_of(image: sitk.Image, labels: np.ndarray, label: int) -> list[float]:
    zz, yy, xx = np.nonzero(labels == label)
    k = len(zz) // 2
    return list(image.TransformIndexToPhysicalPoint((int(xx[k]), int(yy[k]), int(zz[k]))))


class Worker:
    def __init__(self, models: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "CovidCTAnalysis"), "PYTHONUNBUFFERED": "1"}
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "CovidCTAnalysisLib.interactive.worker", "--models-dir",
                                      str(models), "--device", "cpu", "--threads", "2"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, bufsize=1)
        self.ready = self.answer()
        self.startup_s = time.perf_counter() - self.t0

    def answer(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"the worker ended: {self.proc.stderr.read()[-2000:]}"
        return json.loads(line)

    def ask(self, request) -> tuple[dict, float]:
        t = time.perf_counter()
        self.proc.stdin.write((request if isinstance(request, str) else json.dumps(request)) + "\n")
        self.proc.stdin.flush()
        return self.answer(), time.perf_counter() - t


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    ph = make_phantom("covid", 7, size=(64, 56, 24))
    folder = tmp_path_factory.mktemp("worker-case")
    sitk.WriteImage(ph.image, str(folder / "image.nrrd"))
    sitk.WriteImage(ph.truth, str(folder / "labelmap.nrrd"))
    return folder, ph.image, sitk.GetArrayFromImage(ph.truth)


def test_worker_refines_refuses_stays_alive_and_shuts_down(tiny_interactive_models, case, tmp_path):
    folder, image, labels = case
    worker = Worker(tiny_interactive_models)
    assert worker.ready["ok"] and worker.ready["op"] == "ready", worker.ready
    assert worker.ready["model"]["task"] == "interactive" and len(worker.ready["model"]["sha256"]) == 64
    opened, _ = worker.ask({"op": "open", "image": str(folder / "image.nrrd"),
                            "labelmap": str(folder / "labelmap.nrrd"), "id": 1})
    assert opened["ok"] and opened["id"] == 1 and opened["lesion_voxels"] == int((labels == LESION).sum())

    out = tmp_path / "corrected.nrrd"
    times, changes, clicks = [], [], []
    current = labels
    for n, (kind, label) in enumerate((("add", 1), ("remove", LESION), ("add", 2))):
        answer, seconds = worker.ask({"op": "click", "kind": kind, "lps": lps_of(image, labels, label),
                                      "output": str(out)})
        times.append(seconds)
        clicks.append(answer)
        assert answer["ok"], answer
        changes.append(answer["changed_voxels"])
        new = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
        changed = new != current
        assert int(changed.sum()) == answer["changed_voxels"]
        x0, y0, z0, x1, y1, z1 = answer["roi_box_xyz"]
        inside = np.zeros_like(changed)
        inside[z0:z1, y0:y1, x0:x1] = True
        assert not (changed & ~inside).any(), f"click {n} changed voxels outside its ROI"
        assert ((new[changed] == LESION) | (current[changed] == LESION)).all()  # only lesion comes or goes
        assert np.isin(current[changed], (1, 2, 3)).all()  # only within the lungs
        lesion_row = next(s for s in answer["segments"] if s["label"] == LESION)
        assert lesion_row["n_voxels"] == int((new == LESION).sum()) == answer["lesion_voxels"]
        current = new

    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    outside, _ = worker.ask({"op": "click", "kind": "remove", "lps": [1e4, 0.0, 0.0], "output": str(out)})
    assert not outside["ok"] and "outside the image" in outside["error"]
    air = lps_of(image, labels, 0)
    off_lung, _ = worker.ask({"op": "click", "kind": "add", "lps": air, "output": str(out)})
    assert not off_lung["ok"] and "outside the lungs" in off_lung["error"]
    for bad in ("not json", json.dumps({"op": "explode"}), json.dumps({"op": "click", "kind": "add", "lps": [1, 2],
                                                                        "output": str(out)})):
        refused, _ = worker.ask(bad)
        assert not refused["ok"] and "expected" in refused["error"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest  # refusals wrote nothing
    assert worker.proc.poll() is None

    undone, _ = worker.ask({"op": "undo"})
    assert undone["ok"]
    again, _ = worker.ask({"op": "click", "kind": "add", "lps": lps_of(image, labels, 2), "output": str(out)})
    assert again["ok"] and hashlib.sha256(out.read_bytes()).hexdigest() == digest  # undo + same click = same labels

    # Later clicks pay neither Python start-up, imports nor the model load: one process, one load (counted, not
    # timed: on the shared machine a click's seconds say little; benchmarks/bench_refine.py times them).
    print(f"worker start-up {worker.startup_s:.2f} s; clicks {', '.join(f'{t:.2f}' for t in times)} s, "
          f"changed voxels {changes}")
    assert {a["pid"] for a in clicks + [undone, again]} == {worker.ready["pid"]} == {worker.proc.pid}
    assert {a["model_loads"] for a in [worker.ready, *clicks, undone, again]} == {1}

    bye, _ = worker.ask({"op": "shutdown"})
    assert bye["ok"]
    assert worker.proc.wait(timeout=30) == 0


def test_worker_without_a_model_says_so_and_exits_1(tmp_path):
    worker = Worker(tmp_path / "empty-registry")
    assert not worker.ready["ok"] and "interactive" in worker.ready["error"]
    assert worker.proc.wait(timeout=30) == 1
