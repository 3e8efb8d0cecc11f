"""Render the README overview: a synthetic phantom with its segments in axial, coronal and 3-D views.

    python tools/render_overview.py [--seed 3] [--analysis-dir DIR] [--output Resources/Screenshots/overview.png]

The CT comes from ``phantom.make_phantom("covid", seed)``; the segments from its
truth, or from a ``covidct analyze`` output folder of that phantom (``--analysis-dir``:
its labelmap.nii.gz, and Dice against the truth from its report.json). The 2-D
views are drawn from the arrays; the 3-D view is rendered by VTK off-screen
(EGL, else OSMesa), so no display is needed. The picture stands in for a Slicer
screenshot; its caption says it is a synthetic phantom and research use only.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CovidCTAnalysis"))

from CovidCTAnalysisLib import constants  # noqa: E402
from CovidCTAnalysisLib.geometry import aligned_grid  # noqa: E402

DISPLAY_SPACING_MM = 1.5
LUNG_WINDOW = (-600.0, 1500.0)  # (level, width), as the classifier's first channel
OVERLAY_ALPHA = 0.45
LABEL_OPACITY_3D = {constants.LEFT_LUNG: 0.25, constants.RIGHT_LUNG: 0.25, constants.LESION: 1.0}
MAX_BYTES = 500_000


class RenderingUnavailable(RuntimeError):
    """VTK cannot open an off-screen OpenGL context on this machine."""


def chooseOffscreenBackend() -> None:
    """Without a display, ask VTK for EGL (or OSMesa) before it creates a window; say what is missing."""
    if os.environ.get("DISPLAY") or os.environ.get("VTK_DEFAULT_OPENGL_WINDOW"):
        return
    if ctypes.util.find_library("EGL"):
        os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"
    elif ctypes.util.find_library("OSMesa"):
        os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkOSOpenGLRenderWindow"
    else:
        raise RenderingUnavailable(
            "no display and neither libEGL nor libOSMesa was found, so VTK cannot render off-screen. "
            "Install one, e.g. on Debian/Ubuntu: apt-get install libegl1 libgl1-mesa-dri (EGL) or libosmesa6 (OSMesa)."
        )


def toDisplayGrid(image: sitk.Image, labels: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Resample CT and labels onto an axis-aligned LPS grid with square voxels: arrays (z, y, x)."""
    reference = aligned_grid(image, DISPLAY_SPACING_MM).reference()
    ct = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, constants.AIR_HU, sitk.sitkFloat32)
    lab = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(lab)


def overlay(ct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB of a CT slice in the lung window with the segments blended in their colours."""
    level, width = LUNG_WINDOW
    gray = np.clip((ct - (level - width / 2)) / width, 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for label, term in constants.TERMINOLOGY.items():
        mask = labels == label
        rgb[mask] = (1 - OVERLAY_ALPHA) * rgb[mask] + OVERLAY_ALPHA * np.array(term.color_rgb) / 255.0
    return rgb


def render3d(labels: np.ndarray, size: tuple[int, int] = (560, 560)) -> np.ndarray:
    """Anterior 3-D view of the segment surfaces (lungs translucent, lesions opaque) as an RGB array."""
    chooseOffscreenBackend()
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401 - registers the OpenGL render window
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkFiltersCore import vtkWindowedSincPolyDataFilter
    from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D
    from vtkmodules.vtkRenderingCore import (
        vtkActor,
        vtkPolyDataMapper,
        vtkRenderer,
        vtkRenderWindow,
        vtkWindowToImageFilter,
    )

    image = vtkImageData()
    image.SetDimensions(labels.shape[2], labels.shape[1], labels.shape[0])
    image.SetSpacing([DISPLAY_SPACING_MM] * 3)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(labels).ravel(), deep=True))
    renderer = vtkRenderer()
    renderer.SetBackground(0.08, 0.09, 0.12)
    for label, term in constants.TERMINOLOGY.items():
        if not np.any(labels == label):
            continue
        surface = vtkDiscreteFlyingEdges3D()
        surface.SetInputData(image)
        surface.SetValue(0, label)
        smooth = vtkWindowedSincPolyDataFilter()
        smooth.SetInputConnection(surface.GetOutputPort())
        smooth.SetNumberOfIterations(40)
        smooth.SetPassBand(0.01)
        smooth.NormalizeCoordinatesOn()
        mapper = vtkPolyDataMapper()
        mapper.SetInputConnection(smooth.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*(c / 255.0 for c in term.color_rgb))
        actor.GetProperty().SetOpacity(LABEL_OPACITY_3D[label])
        renderer.AddActor(actor)
    window = vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.AddRenderer(renderer)
    if hasattr(window, "SupportsOpenGL") and not window.SupportsOpenGL():
        raise RenderingUnavailable(f"VTK's {window.GetClassName()} has no OpenGL context; install libegl1 and "
                                   "libgl1-mesa-dri (or libosmesa6 and set VTK_DEFAULT_OPENGL_WINDOW=vtkOSOpenGLRenderWindow)")
    # Anterior view in LPS: the camera sits at -y (anterior), superior (+z) is up, so the
    # patient's left (+x) appears on the viewer's right, as in Slicer's anterior 3-D view.
    camera = renderer.GetActiveCamera()
    center = np.array(labels.shape[::-1]) * DISPLAY_SPACING_MM / 2
    camera.SetFocalPoint(*center)
    camera.SetPosition(*(center + [0.0, -1000.0, 0.0]))
    camera.SetViewUp(0.0, 0.0, 1.0)
    renderer.ResetCamera()
    camera.Zoom(1.3)
    window.Render()
    grab = vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    out = grab.GetOutput()
    width, height, _ = out.GetDimensions()
    rgb = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]
    if rgb.max() == 0:
        raise RenderingUnavailable(f"VTK's {window.GetClassName()} rendered an empty image")
    return rgb


def renderOverview(image: sitk.Image, labels: sitk.Image, title: str, caption: str, output: Path) -> Path:
    """Write the three-view PNG (axial and coronal through the most lesion, 3-D anterior)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ct, lab = toDisplayGrid(image, labels)
    lesion = lab == constants.LESION
    lungs = lab > 0
    zs = lesion.sum(axis=(1, 2)) if lesion.any() else lungs.sum(axis=(1, 2))
    # Coronal: a wide lung section that also cuts much lesion.
    ys = lungs.sum(axis=(0, 2)) * (np.sqrt(lesion.sum(axis=(0, 2))) if lesion.any() else 1)
    z, y = int(np.argmax(zs)), int(np.argmax(ys))
    axial = overlay(ct[z], lab[z])  # radiological: patient's right on the viewer's left, anterior up
    coronal = overlay(ct[:, y, :], lab[:, y, :])[::-1]  # superior up
    volume = render3d(lab)

    figure = Figure(figsize=(15, 5.9), dpi=100)
    axes = figure.subplots(1, 3)
    for ax, picture, name in ((axes[0], axial, f"Axial (slice {z})"), (axes[1], coronal, f"Coronal (row {y})"),
                              (axes[2], volume, "3-D, anterior view")):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(name, fontsize=12)
        ax.set_axis_off()
    for ax in axes[:2]:
        ax.text(0.01, 0.5, "R", transform=ax.transAxes, color="white", fontsize=12, va="center")
        ax.text(0.97, 0.5, "L", transform=ax.transAxes, color="white", fontsize=12, va="center")
    handles = [Patch(color=np.array(t.color_rgb) / 255.0, label=constants.LABEL_NAMES[label])
               for label, t in constants.TERMINOLOGY.items()]
    figure.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=11, bbox_to_anchor=(0.5, 0.075))
    figure.suptitle(title, fontsize=14, fontweight="bold")
    figure.text(0.5, 0.015, "\n".join(textwrap.wrap(caption, 170)), ha="center", fontsize=10, color="#b00000")
    figure.subplots_adjust(left=0.01, right=0.99, top=0.88, bottom=0.15, wspace=0.03)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    shrinkPng(output)
    return output


def shrinkPng(path: Path) -> None:
    """Keep the PNG under MAX_BYTES (quantise to a palette if needed)."""
    from PIL import Image

    if path.stat().st_size <= MAX_BYTES:
        return
    Image.open(path).convert("RGB").quantize(colors=192).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=3, help="phantom seed (default 3)")
    parser.add_argument("--analysis-dir", type=Path, help="covidct analyze output folder of the phantom written by "
                                                          "`covidct phantom --kind covid --seed SEED` (default: "
                                                          "show the phantom's truth)")
    parser.add_argument("--output", type=Path, default=REPO / "Resources" / "Screenshots" / "overview.png")
    args = parser.parse_args(argv)
    from CovidCTAnalysisLib.phantom.generator import make_phantom

    phantom = make_phantom("covid", args.seed)
    title = f"CovidCTAnalysis: synthetic COVID-19 phantom (seed {args.seed})"
    caption = "Synthetic phantom, not a patient scan. Research use, not for diagnosis."
    image = phantom.image
    if args.analysis_dir:
        labels = sitk.ReadImage(str(args.analysis_dir / "labelmap.nii.gz"))
        report = json.loads((args.analysis_dir / "report.json").read_text())
        analysed = Path(report["input"]["path"])
        if not analysed.is_file():
            print(f"error: the analysed CT {analysed} (report.json input.path) is gone; expected the phantom written "
                  f"by `covidct phantom --kind covid --seed {args.seed}`", file=sys.stderr)
            return 2
        image = sitk.ReadImage(str(analysed))  # the CT exactly as analysed (same grid as the labelmap)
        report = json.loads((args.analysis_dir / "report.json").read_text())
        title += f", segments from covidct analyze --method {report.get('method')}"
        if report.get("dice"):
            dice = ", ".join(f"{k} {v:.2f}" for k, v in report["dice"].items() if v is not None)
            caption = f"Dice vs the phantom truth: {dice}. " + caption
    else:
        labels = phantom.truth
        title += ", segments from the phantom truth"
    caption += " Drawn by tools/render_overview.py (a stand-in for a 3D Slicer screenshot)."
    try:
        out = renderOverview(image, labels, title, caption, args.output)
    except RenderingUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(f"wrote {out} ({out.stat().st_size / 1000:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
