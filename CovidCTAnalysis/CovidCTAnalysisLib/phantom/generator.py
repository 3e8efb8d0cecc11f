"""Seeded, deterministic synthetic chest CT phantoms with truth labels.

The anatomy (``body``, ``anatomy``, ``vessels``, ``lesions``) is
defined in patient LPS coordinates and sampled onto the requested grid, so any
spacing, size and direction matrix works and LPS +x is always the patient's
left. This module chooses the grid, maps the patient-aligned canvas onto it,
simulates the acquisition (partial-volume blur, noise) and writes the files.

Example::

    >>> ph = make_phantom("covid", seed=3, size=(96, 96, 64))
    >>> ph.image.GetPixelIDTypeAsString(), ph.truth.GetSize()
    ('16-bit signed integer', (96, 96, 64))

The seed drives four independent random streams (grid, anatomy, lesions,
noise), so the same seed gives the same patient for every ``kind`` and for
every forced grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from CovidCTAnalysisLib.constants import LESION
from CovidCTAnalysisLib.errors import InputError, OutputError
from CovidCTAnalysisLib.files import atomic_path
from CovidCTAnalysisLib.geometry import aligned_grid, is_axis_aligned, patient_axes
from CovidCTAnalysisLib.loading.volume import voxel_volume_ml
from CovidCTAnalysisLib.phantom.anatomy import render_anatomy
from CovidCTAnalysisLib.phantom.body import Anatomy
from CovidCTAnalysisLib.phantom.canvas import Canvas, SmoothField
from CovidCTAnalysisLib.phantom.lesions import render_lesions

KINDS = ("normal", "pneumonia", "covid")
# Bumped whenever the phantom made for a given (kind, seed, grid) changes: key caches on it.
# 8: oblique grids drawn on geometry.aligned_grid (one corner convention); 9: CT-like in-plane correlated noise
PHANTOM_VERSION = "9"
HU_CLIP = (-1024, 3071)  # what a 12-bit CT reconstruction can hold
MAX_VOXELS = 2**28  # ~ 3 GB peak memory (about 11.5 bytes per voxel while rendering)
IMAGE_NAME = "image.nii.gz"
TRUTH_NAME = "truth.nii.gz"


class PhantomParameterError(InputError, ValueError):
    """A phantom argument is invalid (both an ``InputError`` and a ``ValueError``)."""


@dataclass(frozen=True)
class Phantom:
    """One synthetic chest CT and its truth labels (1 left lung, 2 right lung, 3 lesion)."""

    image: sitk.Image  # int16 HU, LPS geometry
    truth: sitk.Image  # uint8 on the same grid
    kind: str
    seed: int
    # physical (LPS mm) landmarks such as "carina"; and how it was made (noise SD, scale, lesion count)
    landmarks: dict = field(default_factory=dict, compare=False)
    info: dict = field(default_factory=dict, compare=False)

    def _count(self, label: int) -> int:
        return int(np.count_nonzero(sitk.GetArrayViewFromImage(self.truth) == label))

    def lesion_volume_ml(self) -> float:
        """Volume of the lesion label (3) in mL."""
        return self._count(LESION) * voxel_volume_ml(self.truth)

    def lung_volume_ml(self, label: int) -> float:
        """Volume of the voxels labelled ``label`` (1 left, 2 right lung; lesion voxels are label 3) in mL."""
        return self._count(int(label)) * voxel_volume_ml(self.truth)


# --- argument checks -------------------------------------------------------------------------------

def _check_kind(kind) -> str:
    if kind not in KINDS:
        raise PhantomParameterError(f"phantom kind {kind!r} is unknown; expected one of {', '.join(KINDS)}")
    return kind


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise PhantomParameterError(f"phantom seed {seed!r} is invalid; expected an integer >= 0")
    return int(seed)


def _check_triple(name: str, value, integer: bool):
    if value is None:
        return None
    try:
        values = tuple(value)
    except TypeError:
        raise PhantomParameterError(f"phantom {name} {value!r} is invalid; expected three numbers (x, y, z)") from None
    ok = len(values) == 3 and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v) and v > 0
        for v in values
    )
    if ok and integer:
        ok = all(float(v).is_integer() for v in values)
    if not ok:
        what = "three positive integers" if integer else "three positive finite numbers in mm"
        raise PhantomParameterError(f"phantom {name} {value!r} is invalid; expected {what} (x, y, z)")
    return tuple(int(v) for v in values) if integer else tuple(float(v) for v in values)


def _check_direction(direction, seed: int) -> np.ndarray:
    if direction is None:
        return np.eye(3)
    if isinstance(direction, str):
        if direction != "random":
            raise PhantomParameterError(
                f"phantom direction {direction!r} is invalid; expected 9 numbers, None or 'random'")
        return np.array(random_direction(seed)).reshape(3, 3)
    try:
        d = np.asarray(direction, dtype=float).ravel()
    except (TypeError, ValueError):
        d = np.zeros(0)
    if d.size != 9 or not np.all(np.isfinite(d)) or not np.allclose(d.reshape(3, 3) @ d.reshape(3, 3).T, np.eye(3), atol=1e-4):
        raise PhantomParameterError(
            f"phantom direction {direction!r} is invalid; expected 9 numbers forming an orthonormal "
            "3x3 matrix, row-major as SimpleITK orders it (columns = LPS directions of the x, y, z index axes)")
    return d.reshape(3, 3)


def random_direction(seed: int) -> tuple[float, ...]:
    """A signed axis-permutation direction matrix chosen by ``seed`` (identity when seed % 4 == 0)."""
    seed = _check_seed(seed)
    if seed % 4 == 0:
        return tuple(float(v) for v in np.eye(3).ravel())
    rng = np.random.default_rng([seed, 7])
    d = np.zeros((3, 3))
    for j, a in enumerate(rng.permutation(3)):
        d[a, j] = rng.choice([-1.0, 1.0])
    return tuple(float(v) for v in d.ravel())


# --- grid ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Grid:
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    direction: np.ndarray
    origin: np.ndarray
    centre: np.ndarray  # chest centre, physical LPS mm
    scale: float


def _choose_grid(rng: np.random.Generator, scale: float, size, spacing, direction: np.ndarray) -> _Grid:
    fov_xy = float(np.clip(rng.uniform(340.0, 400.0) * scale, 330.0, 440.0))
    fov = np.array([fov_xy, fov_xy, rng.uniform(260.0, 320.0) * scale])  # per physical axis
    fov_index = fov[list(patient_axes(direction).lps_of_index)]  # the field of view along each index axis
    default_spacing = np.array([rng.uniform(1.2, 2.0)] * 2 + [rng.uniform(1.5, 5.0)])
    if spacing is None and size is None:
        spacing = tuple(np.round(default_spacing, 4))
    if size is None:
        size = tuple(int(max(1, np.ceil(f / s))) for f, s in zip(fov_index, spacing, strict=True))
    elif spacing is None:
        spacing = tuple(float(np.round(f / n, 4)) for f, n in zip(fov_index, size, strict=True))
    centre = np.array([rng.uniform(-10.0, 10.0), rng.uniform(-10.0, 10.0) + 20.0, rng.uniform(-350.0, -150.0)])
    # the lungs span about -130..+120 normalized mm in z: centre the field of view a little low
    grid_centre = centre + np.array([rng.uniform(-12.0, 12.0), rng.uniform(-12.0, 12.0), rng.uniform(-14.0, 2.0) * scale])
    half = direction @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2.0)
    return _Grid(tuple(int(n) for n in size), tuple(float(s) for s in spacing), direction,
                 grid_centre - half, centre, scale)


def _with_geometry(array: np.ndarray, grid: _Grid) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(grid.spacing)
    img.SetOrigin(tuple(float(v) for v in grid.origin))
    img.SetDirection(tuple(float(v) for v in grid.direction.ravel()))
    return img


def _resample_to(img: sitk.Image, grid: _Grid, interpolator, default: float) -> np.ndarray:
    f = sitk.ResampleImageFilter()
    f.SetSize(list(grid.size))
    f.SetOutputSpacing(grid.spacing)
    f.SetOutputOrigin(tuple(float(v) for v in grid.origin))
    f.SetOutputDirection(tuple(float(v) for v in grid.direction.ravel()))
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(default)
    return sitk.GetArrayFromImage(f.Execute(img))


def _render_on_grid(grid: _Grid, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """Clean HU (float32) and labels (uint8) as (z, y, x) arrays of the target grid."""
    d, s, n = grid.direction, np.asarray(grid.spacing), np.asarray(grid.size)
    voxel = float(np.prod(s) ** (1.0 / 3.0)) / grid.scale
    if is_axis_aligned(d):
        axis_of = patient_axes(d).lps_of_index
        coords = [None, None, None]
        for j, a in enumerate(axis_of):
            c = grid.origin[a] + d[a, j] * s[j] * np.arange(n[j])
            coords[a] = (c - grid.centre[a]) / grid.scale
        canvas, landmarks, info = _draw(Canvas(*coords, voxel_mm=voxel), kind, seed)
        # canvas axes are (LPS z, y, x); the image's numpy axis m holds index axis 2 - m
        order = tuple(int(2 - axis_of[2 - m]) for m in range(3))
        hu = np.ascontiguousarray(np.transpose(canvas.hu, order))
        label = np.ascontiguousarray(np.transpose(canvas.label, order))
        return hu, label, landmarks, info
    # oblique grid: draw on a patient-aligned grid around it, then resample
    # at the grid's own spacing per patient axis, one voxel wider on each side for the linear interpolation
    axes = patient_axes(d)
    step = s[[axes.index_axis_along(k) for k in range(3)]]
    canvas_grid = aligned_grid(geometry=(n, s, grid.origin, d), margin_mm=step)
    coords = [(canvas_grid.centres(a) - grid.centre[a]) / grid.scale for a in range(3)]
    canvas, landmarks, info = _draw(Canvas(*coords, voxel_mm=voxel), kind, seed)
    out = []
    for arr, interp, default in ((canvas.hu, sitk.sitkLinear, -1000.0), (canvas.label, sitk.sitkNearestNeighbor, 0.0)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(tuple(float(v) for v in canvas_grid.spacing))
        img.SetOrigin(tuple(float(v) for v in canvas_grid.origin))
        out.append(_resample_to(img, grid, interp, default))
    return out[0].astype(np.float32), out[1].astype(np.uint8), landmarks, info


def _draw(canvas: Canvas, kind: str, seed: int) -> tuple[Canvas, dict, dict]:
    """Render the seed's patient (anatomy stream) and the kind's lesions (lesion stream) on ``canvas``."""
    rng = np.random.default_rng([seed, 1])
    anat = Anatomy.from_rng(rng)
    texture = SmoothField(rng)
    landmarks = render_anatomy(canvas, anat, rng, texture)
    lesions = render_lesions(canvas, anat, kind, np.random.default_rng([seed, 2, KINDS.index(kind)]))
    return canvas, landmarks, {"lesion_count": len(lesions)}


# --- acquisition -----------------------------------------------------------------------------------

def _blur_sigmas(spacing_zyx) -> list[float]:
    # scanner PSF (0.45 mm SD) combined with the voxel's box profile (SD = 0.29 x spacing), in voxels
    return [float(np.sqrt((0.29 * s) ** 2 + 0.45**2) / s) for s in spacing_zyx]


def _noise_gain(sigmas, truncate: float) -> float:
    """SD of unit white noise after scipy's sampled Gaussian filter (product over the axes)."""
    gain = 1.0
    for sigma in sigmas:
        if sigma <= 0:
            continue
        radius = int(truncate * sigma + 0.5)
        w = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        w /= w.sum()
        gain *= float(np.sqrt(np.sum(w**2)))
    return gain


def _acquire(hu: np.ndarray, grid: _Grid, rng: np.random.Generator, noise_sd: float,
             noise_corr: float) -> np.ndarray:
    """Blur (scanner PSF + partial volume), then add CT-like noise; int16 HU clipped to [-1024, 3071].

    CT noise is correlated within a slice by the reconstruction kernel: white noise filtered in the
    patient's axial plane with a Gaussian of ``noise_corr`` voxels, scaled so its SD is ``noise_sd``.
    0.62-0.72 voxels puts the texture measure of ``results.plausibility.input_profile`` at 1.33-1.50 on
    phantoms, inside the real scans' 1.35-1.55 (``benchmarks/eval_phantom_realism.py``); noise blurred
    with the anatomy by the PSF, as before version 9, gave 1.06-1.16. Works in place on ``hu`` (float32, (z, y, x)).
    """
    ndimage.gaussian_filter(hu, _blur_sigmas(grid.spacing[::-1]), truncate=3.0, output=hu, mode="nearest")
    # numpy axis 2 - j holds index axis j; the axial plane is the index axes along LPS x and y
    axial = 2 - patient_axes(grid.direction).index_axis_along(2)
    sigmas = [0.0 if m == axial else noise_corr for m in range(3)]
    amplitude = noise_sd / _noise_gain(sigmas, 3.0)
    out = np.empty(hu.shape, dtype=np.int16)
    for start in range(0, hu.shape[axial], 16):  # chunks of slices: the filter works within each slice
        part = (slice(None),) * axial + (slice(start, start + 16),)
        noise = rng.standard_normal(hu[part].shape, dtype=np.float32)
        ndimage.gaussian_filter(noise, sigmas, truncate=3.0, output=noise, mode="wrap")
        out[part] = np.clip(np.rint(hu[part] + amplitude * noise), *HU_CLIP)
    return out


# --- public API ------------------------------------------------------------------------------------

def make_phantom(kind: str, seed: int, size: tuple[int, int, int] | None = None,
                 spacing: tuple[float, float, float] | None = None,
                 direction: tuple[float, ...] | str | None = None) -> Phantom:
    """Build a synthetic chest CT of ``kind`` ("normal" | "pneumonia" | "covid"), deterministic for ``seed``.

    ``size`` (voxels) and ``spacing`` (mm) are in (x, y, z) index order. Unforced, they vary with the
    seed (1.2-2.0 mm in-plane, 1.5-5 mm slices, covering the chest); forcing one picks the other to
    cover the chest; forcing both samples the fixed-size anatomy (it may be cropped). ``direction`` is
    9 floats row-major (SimpleITK order), None for identity, or "random" for :func:`random_direction`.
    Raises :class:`PhantomParameterError` (a ValueError and an InputError) for bad arguments.
    """
    kind = _check_kind(kind)
    seed = _check_seed(seed)
    size = _check_triple("size", size, integer=True)
    spacing = _check_triple("spacing", spacing, integer=False)
    d = _check_direction(direction, seed)
    grid_rng = np.random.default_rng([seed, 0])
    scale = float(grid_rng.uniform(0.9, 1.1))
    grid = _choose_grid(grid_rng, scale, size, spacing, d)
    if int(np.prod(grid.size, dtype=np.int64)) > MAX_VOXELS:
        raise PhantomParameterError(
            f"phantom size {grid.size} has {int(np.prod(grid.size, dtype=np.int64))} voxels; "
            f"expected at most {MAX_VOXELS} (use a coarser spacing or a smaller size)")
    hu, label, landmarks, info = _render_on_grid(grid, kind, seed)
    noise_rng = np.random.default_rng([seed, 3])
    noise_sd = float(noise_rng.uniform(10.0, 40.0))  # pixel SD; neighbour differences show ~ 0.7 of it
    noise_corr = float(noise_rng.uniform(0.62, 0.72))  # in-plane noise correlation (voxels), see _acquire
    image = _with_geometry(_acquire(hu, grid, noise_rng, noise_sd, noise_corr), grid)
    del hu
    truth = _with_geometry(label, grid)
    physical = {k: tuple(float(v) for v in grid.centre + grid.scale * np.asarray(p)) for k, p in landmarks.items()}
    info = dict(info, noise_sd_hu=round(noise_sd, 2), noise_corr_voxels=round(noise_corr, 3), scale=round(scale, 4),
                version=PHANTOM_VERSION)
    return Phantom(image=image, truth=truth, kind=kind, seed=seed, landmarks=physical, info=info)


def write_phantom(phantom: Phantom, out_dir: Path, force: bool = False) -> dict[str, Path]:
    """Write ``image.nii.gz`` and ``truth.nii.gz`` into ``out_dir`` atomically (temp file + rename).

    Refuses to overwrite either file unless ``force`` (raises OutputError naming the path); nothing
    is written when it refuses. Returns {"image": path, "truth": path}.
    """
    out_dir = Path(out_dir)
    targets = {"image": out_dir / IMAGE_NAME, "truth": out_dir / TRUTH_NAME}
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"phantom output folder {out_dir} is a file; expected a folder (or a path to create)")
    if not force:
        for path in targets.values():
            if path.exists():
                raise OutputError(f"{path} already exists; pass force=True (CLI: --force) to overwrite it")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create phantom output folder {out_dir}: {e}") from e
    try:  # both written before either is renamed in
        with atomic_path(targets["image"]) as image_tmp, atomic_path(targets["truth"]) as truth_tmp:
            sitk.WriteImage(phantom.image, str(image_tmp), useCompression=True)
            sitk.WriteImage(phantom.truth, str(truth_tmp), useCompression=True)
    except (OSError, RuntimeError) as e:
        raise OutputError(f"cannot write phantom into {out_dir}: {e}") from e
    return targets
