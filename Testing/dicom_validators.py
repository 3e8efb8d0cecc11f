"""Independent DICOM SEG validators for the tests: dciodvfy, dcmqi's segimage2itkimage, highdicom.

Rule: locally, a missing validator makes its test skip with a reason; under
``CI=true`` a missing validator is a failure (CI installs dicom3tools and the
``[dev]`` extra brings dcmqi, so a skip there would hide a broken setup).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def missing_tool(message: str) -> None:
    """Skip locally, fail under CI=true."""
    if in_ci():
        pytest.fail(f"{message} (CI=true: validators must be installed, see .ci/run)")
    pytest.skip(message)


def find_dciodvfy() -> str | None:
    return shutil.which("dciodvfy")


def find_segimage2itkimage() -> str | None:
    """The dcmqi wheel's converter: beside this Python (the venv's bin), on PATH, or in the package."""
    here = Path(sys.executable).parent / "segimage2itkimage"
    if here.is_file():
        return str(here)
    on_path = shutil.which("segimage2itkimage")
    if on_path:
        return on_path
    try:
        import dcmqi  # noqa: PLC0415

        packaged = Path(dcmqi.__file__).parent / "bin" / "segimage2itkimage"
        return str(packaged) if packaged.is_file() else None
    except ImportError:
        return None


def require_dciodvfy() -> str:
    tool = find_dciodvfy()
    if tool is None:
        missing_tool("dciodvfy (Debian package dicom3tools) is not installed: apt-get install dicom3tools")
    return tool  # type: ignore[return-value]


def require_segimage2itkimage() -> str:
    tool = find_segimage2itkimage()
    if tool is None:
        missing_tool("segimage2itkimage (pip package dcmqi, in the [dev] extra) is not installed")
    return tool  # type: ignore[return-value]


@dataclass(frozen=True)
class DciodvfyReport:
    errors: list[str]
    warnings: list[str]
    output: str


def run_dciodvfy(path: Path) -> DciodvfyReport:
    """Run dciodvfy on one file; its 'Error' lines are IOD violations."""
    tool = require_dciodvfy()
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    lines = output.splitlines()
    errors = [ln for ln in lines if ln.startswith("Error") or ln.startswith("Abort")]
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    return DciodvfyReport(errors, warnings, output)


def read_with_dcmqi(seg_path: Path, out_dir: Path) -> dict[str, sitk.Image]:
    """Convert a SEG with segimage2itkimage; returns {segment label: mask image} from its meta JSON."""
    tool = require_segimage2itkimage()
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([tool, "--inputDICOM", str(seg_path), "--outputDirectory", str(out_dir), "-t", "nrrd",
                           "-p", "seg"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"segimage2itkimage failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    meta = json.loads((out_dir / "seg-meta.json").read_text())
    masks: dict[str, sitk.Image] = {}
    for group in meta["segmentAttributes"]:
        for attr in group:
            masks[attr["SegmentLabel"]] = sitk.ReadImage(str(out_dir / f"seg-{attr['labelID']}.nrrd"))
    return masks


def on_grid(mask: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """A reader's mask resampled (nearest neighbour) onto the source grid, as a (z, y, x) bool array."""
    resampled = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    return sitk.GetArrayFromImage(resampled) > 0


IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


# --- Test series -------------------------------------------------------------------------------------------------

def chest_volume(seed: int = 0, size: tuple[int, int, int] = (64, 64, 20),
                 spacing: tuple[float, float, float] = (5.0, 4.0, 4.0),
                 direction: tuple[float, ...] | None = None) -> tuple[sitk.Image, sitk.Image]:
    """(CT in HU, truth labelmap 1 = left lung, 2 = right lung, 3 = lesion) on a small grid.

    Uses the project's chest phantom when ``phantom.py`` is present, else a simple
    synthetic chest (body ellipse, two lungs, one lesion) with the same labels.
    """
    try:
        from CovidCTAnalysisLib.phantom.generator import make_phantom  # noqa: PLC0415
    except ImportError:
        make_phantom = None
    if make_phantom is not None:
        # Identity direction unless asked: the phantom otherwise varies it with the seed.
        ph = make_phantom("covid", seed, size=size, spacing=spacing, direction=direction or IDENTITY)
        return ph.image, ph.truth
    nx, ny, nz = size
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    hu = np.full((nz, ny, nx), -1000.0)
    labels = np.zeros((nz, ny, nx), np.uint8)
    body = ((x - cx) / (0.45 * nx)) ** 2 + ((y - cy) / (0.4 * ny)) ** 2 <= 1
    hu[body] = 40.0
    for label, sx in ((1, +1), (2, -1)):  # LPS +x (higher index, identity direction) is the patient's left
        lung = ((x - cx - sx * 0.2 * nx) / (0.15 * nx)) ** 2 + ((y - cy) / (0.28 * ny)) ** 2 <= 1
        lung &= (z >= 2) & (z < nz - 2)
        hu[lung] = -850.0
        labels[lung] = label
    lesion = ((x - cx + 0.2 * nx) ** 2 + (y - cy) ** 2 + ((z - nz / 2) * 2) ** 2) <= (0.07 * nx) ** 2
    hu[lesion] = -450.0
    labels[lesion] = 3
    rng = np.random.default_rng(seed)
    hu += rng.normal(0, 10, hu.shape)
    image = sitk.GetImageFromArray(hu.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((-(nx - 1) * spacing[0] / 2, -(ny - 1) * spacing[1] / 2, -100.0))
    if direction is not None:
        image.SetDirection(direction)
    truth = sitk.GetImageFromArray(labels)
    truth.CopyInformation(image)
    return image, truth


def edit_series(folder: Path, **changes) -> None:
    """Rewrite every DICOM file in ``folder`` with header keywords set (None deletes the attribute)."""
    import pydicom  # noqa: PLC0415

    settings = pydicom.config.settings
    before = settings.reading_validation_mode, settings.writing_validation_mode
    # Bad values are the point of some edits; don't warn about them.
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        for f in sorted(folder.iterdir()):
            ds = pydicom.dcmread(f)
            for keyword, value in changes.items():
                if value is None:
                    if keyword in ds:
                        delattr(ds, keyword)
                else:
                    setattr(ds, keyword, value)
            ds.save_as(f)
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = before
