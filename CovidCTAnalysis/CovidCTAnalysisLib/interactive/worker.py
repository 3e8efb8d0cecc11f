"""A persistent refine worker: the interactive model loaded once, then one JSON request per line.

Run as ``python -m CovidCTAnalysisLib.interactive.worker [--model ID[@VERSION]] [--models-dir DIR]
[--device auto|cpu|cuda]`` (Slicer's "Correct lesions" panel runs it in ``PythonSlicer``), so that a
click pays neither Python start-up, imports nor the model load. The model is resolved and loaded
through the registry (its sha256 checked). Requests on stdin, answers on stdout, one JSON object a
line, in order:

- start-up: ``{"op": "ready", "ok": true, "model": provenance, "seconds": s}`` (or ``ok: false`` and exit 1
  when no model can be loaded);
- ``{"op": "open", "image": PATH, "labelmap": PATH}`` → the scan (read with ``load_ct``) and its 1/2/3
  labelmap on the same grid; answers ``size`` and ``lesion_voxels``;
- ``{"op": "click", "kind": "add"|"remove", "lps": [x, y, z], "output": PATH}`` → the corrected
  labelmap written to ``output`` (uncompressed, so a 512×512×300 labelmap is written in well under a
  second); answers ``changed_voxels``, ``seconds``, ``roi_box_xyz`` and the statistics of
  ``results.statistics`` (``segments``, ``lesion_percent``), so the caller's table needs no recomputation;
- ``{"op": "undo"}`` → the labels before the last click (only its ROI box is kept, not a whole copy), and
  their statistics;
- ``{"op": "shutdown"}`` → answered, then exit 0 (end of stdin does the same).

Every answer repeats the request's ``id`` when it has one; a successful one also carries the worker's ``pid`` and
``model_loads`` (1 for the life of the worker: a click never reloads the model). A refused request (a click outside the image,
an add click outside the lungs: the core's own ``check_clicks`` messages; a malformed line) is answered
``{"ok": false, "error": message}`` and the worker keeps serving; nothing is written then.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from CovidCTAnalysisLib.errors import CovidCTError, InputError
from CovidCTAnalysisLib.interactive.clicks import ADD, REMOVE, Click

OPS = ("open", "click", "undo", "shutdown")


class RefineWorker:
    """The loaded model, and the scan being corrected with its ``Refiner`` (after ``open``)."""

    def __init__(self, model, device) -> None:
        self.model, self.device = model, device
        self.refiner = None
        self.undoStack: list[tuple[tuple[int, ...], np.ndarray]] = []

    @property
    def model_loads(self) -> int:
        """Model folders this process has loaded so far (``models.folder.loads_so_far``): 1 for the life of a
        worker, which every answer shows; a click that reloaded the model would raise it."""
        from CovidCTAnalysisLib.models.folder import loads_so_far

        return loads_so_far()

    @classmethod
    def load_from(cls, registry, meta, device) -> RefineWorker:
        """A worker holding ``meta``'s model, loaded (sha256 checked) through ``registry``."""
        return cls(registry.load(meta, device=device), device)

    def handle(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or request.get("op") not in OPS:
            got = request.get("op") if isinstance(request, dict) else request
            raise InputError(f"request op {got!r} is not one of {OPS}; expected a JSON object like "
                             '{"op": "click", "kind": "add", "lps": [x, y, z], "output": "corrected.nrrd"}')
        return getattr(self, "op_" + request["op"])(request)

    def op_open(self, request: dict) -> dict[str, Any]:
        from CovidCTAnalysisLib.interactive.correct import _same_grid
        from CovidCTAnalysisLib.interactive.refine import Refiner
        from CovidCTAnalysisLib.loading.load import load_ct

        image_path, labelmap_path = Path(_text(request, "image")), Path(_text(request, "labelmap"))
        for what, path in (("image", image_path), ("labelmap", labelmap_path)):
            if not path.exists():
                raise InputError(f"open: {what} {path} does not exist; expected a file written for this worker")
        image = load_ct(image_path).image
        labelmap = sitk.ReadImage(str(labelmap_path), sitk.sitkUInt8)
        if not _same_grid(image, labelmap):
            raise InputError(f"open: labelmap {labelmap_path} (size {labelmap.GetSize()}) does not lie on the grid "
                             f"of {image_path} (size {image.GetSize()}); expected the scan's own segmentation")
        labelmap.CopyInformation(image)
        self.refiner = Refiner(image, labelmap, self.model, self.device)
        self.undoStack = []
        return {"size": list(image.GetSize()), "lesion_voxels": _lesion_voxels(self.refiner.labels)}

    def op_click(self, request: dict) -> dict[str, Any]:
        from CovidCTAnalysisLib.interactive.roi import roi_box

        if self.refiner is None:
            raise InputError('click before open; send {"op": "open", "image": ..., "labelmap": ...} first')
        kind = request.get("kind")
        if kind not in (ADD, REMOVE):
            raise InputError(f"click kind {kind!r}; expected {ADD!r} or {REMOVE!r}")
        lps = request.get("lps")
        if not isinstance(lps, list) or len(lps) != 3 or not all(
                isinstance(v, (int, float)) and np.isfinite(v) for v in lps):
            raise InputError(f"click lps {lps!r}; expected [x, y, z] in LPS mm")
        output = Path(_text(request, "output"))
        click = Click(kind, (float(lps[0]), float(lps[1]), float(lps[2])), str(request.get("source") or "worker"))
        self.refiner.check([click])  # the core's refusals, before anything changes
        x0, y0, z0, x1, y1, z1 = box = roi_box(self.refiner.image, [click.lps], self.refiner.roi_mm)
        before = self.refiner.labels[z0:z1, y0:y1, x0:x1].copy()
        step = self.refiner.click(click)
        if step.box != box:  # the Refiner computes the same box; undo depends on it
            raise RuntimeError(f"refine box {step.box} differs from {box}")
        labelmap = self.refiner.labelmap()
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(labelmap, str(output), False)
        except BaseException:
            self.refiner.labels[z0:z1, y0:y1, x0:x1] = before
            self.refiner.clicks.pop()
            raise
        self.undoStack.append((box, before))
        return {**step.as_report(), "output": str(output), "lesion_voxels": _lesion_voxels(self.refiner.labels),
                **_statistics(self.refiner, labelmap)}

    def op_undo(self, request: dict) -> dict[str, Any]:
        if self.refiner is None or not self.undoStack:
            raise InputError("undo: no click to undo")
        (x0, y0, z0, x1, y1, z1), before = self.undoStack.pop()
        self.refiner.labels[z0:z1, y0:y1, x0:x1] = before
        self.refiner.clicks.pop()
        return {"lesion_voxels": _lesion_voxels(self.refiner.labels), **_statistics(self.refiner)}

    def op_shutdown(self, request: dict) -> dict[str, Any]:
        return {}


def _text(request: dict, key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(f"{request.get('op')}: {key!r} is {value!r}; expected a file path")
    return value


def _statistics(refiner, labelmap: sitk.Image | None = None) -> dict[str, Any]:
    """``segments`` and ``lesion_percent`` of the current labels, as ``report.json`` has them."""
    from CovidCTAnalysisLib.results.statistics import lesion_percent, segment_statistics

    labelmap = labelmap if labelmap is not None else refiner.labelmap()
    return {"segments": segment_statistics(refiner.image, labelmap), "lesion_percent": lesion_percent(labelmap)}


def _lesion_voxels(labels: np.ndarray) -> int:
    from CovidCTAnalysisLib.constants import LESION

    return int(np.count_nonzero(labels == LESION))


def _answer(out, op: Any, request_id: Any, ok: bool, **fields) -> None:
    message = {"op": op, "ok": ok, **({"id": request_id} if request_id is not None else {}), **fields}
    out.write(json.dumps(message) + "\n")
    out.flush()


def serve(worker: RefineWorker, lines, out) -> int:
    """Answer every line of ``lines`` until a shutdown request or the end of input; returns 0."""
    for line in lines:
        if not line.strip():
            continue
        request: Any = None
        try:
            request = json.loads(line)
        except json.JSONDecodeError as e:
            _answer(out, None, None, False, error=f"request {line.strip()[:200]!r} is not JSON ({e}); expected one "
                                                  "JSON object a line")
            continue
        op = request.get("op") if isinstance(request, dict) else None
        request_id = request.get("id") if isinstance(request, dict) else None
        try:
            fields = worker.handle(request)
        except CovidCTError as e:
            _answer(out, op, request_id, False, error=str(e))
            continue
        except Exception as e:  # noqa: BLE001 - a failed request must never end the worker
            _answer(out, op, request_id, False, error=f"{type(e).__name__}: {e}")
            continue
        _answer(out, op, request_id, True, **fields, pid=os.getpid(), model_loads=worker.model_loads)
        if op == "shutdown":
            break
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m CovidCTAnalysisLib.interactive.worker", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="interactive model ID or ID@VERSION (default: the registry's choice)")
    p.add_argument("--models-dir", default=None, help="model registry (default: $COVIDCT_MODELS_DIR or the user's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    out = sys.stdout
    try:
        import torch

        from CovidCTAnalysisLib.models.device import select_device
        from CovidCTAnalysisLib.models.registry import ModelRegistry

        if args.threads:
            torch.set_num_threads(args.threads)
        registry = ModelRegistry(root=args.models_dir)
        meta = registry.resolve("interactive", args.model)
        device = select_device(args.device)
        worker = RefineWorker.load_from(registry, meta, device)
    except CovidCTError as e:
        _answer(out, "ready", None, False, error=str(e))
        return 1
    _answer(out, "ready", None, True, model=meta.provenance(), label=meta.label_line(), device=str(device),
            seconds=round(time.perf_counter() - t0, 3), pid=os.getpid(), model_loads=worker.model_loads)
    return serve(worker, sys.stdin, out)


if __name__ == "__main__":
    sys.exit(main())
