"""Hybrid training cases: real CT backgrounds with synthetic lesions painted into the real lung.

Yao et al., "Label-Free Segmentation of COVID-19 Lesions in Lung CT" (IEEE TMI 2021) trained on
normal CT with synthesised lesions only; this module makes such cases from the real scans in
``../shared/data`` so that the segmenter sees real anatomy, noise and vessels:

* **Backgrounds** (``real_backgrounds``): COVID-CT-MD normal001 whole, and the runs of at least
  ``MIN_CLEAR_SLICES`` slices of P001 and cap001 that the radiologists labelled clear
  (``labels.json``), cropped to that run, so no unlabelled real lesion is in a case. Lung labels
  (1 left, 2 right) come from the threshold method (``threshold.lungs.segment_lungs``).
* **Lesions** (``paint_lesions``), with the phantom lesion library (``phantom.lesions``:
  ``Lesion``, ``paint_lesion``; ``phantom.canvas``) on a canvas in patient mm centred on the lungs:
  COVID-like: 2-6 peripheral (sub-pleural), lower-zone-predominant, bilateral ground-glass
  opacities, some with crazy paving or a consolidated core; pneumonia-like: one large
  consolidation cut by a random plane (a fissure) with air bronchograms.
* **Blending**: the lesion is painted onto a low-pass copy of the CT, and the high-pass rest
  (noise, small vessels, fissures) is added back, so the real noise and the vessels stay
  visible through ground glass; inside consolidation only its noise-sized part (the vessels
  are isodense there). Lesion truth is exact (label 3).
* **Seeded variation**: number, size, shape, density and position of the lesions, then
  (``augment``) a left-right mirror half the time (arrays flipped along x and labels 1/2 swapped:
  the labels are patient sides, so after the mirror the former left lung is the patient's right),
  a small elastic deformation (smooth random displacement of at most 1-4 mm, image linear, labels
  nearest, ``scipy.ndimage.map_coordinates``), a small in-plane rotation, a blur or a sharpening
  kernel, now and then thicker slices (pairs of slices averaged) and added noise. What was applied
  is recorded in the case's info (logged). One seed, one case; the same seed gives the same case.

``exclude`` (real patient ids, ``training.real_cases.parse_patients``) leaves a patient's
backgrounds out (leave-one-patient-out).

``hybrid_seg_cases`` writes them to a cache folder as NIfTI (image + truth) and returns
``segmenter_data.SegCase`` rows grouped by the real patient, so a split by ``group`` keeps each
real patient on one side.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import CONSOLIDATION_BAND_HU, GGO_BAND_HU, LEFT_LUNG, LESION, RIGHT_LUNG
from CovidCTAnalysisLib.files import atomic_path
from CovidCTAnalysisLib.masks import swap_left_right
from CovidCTAnalysisLib.phantom.canvas import Canvas, SmoothField, tube_weight
from CovidCTAnalysisLib.phantom.lesions import Lesion, paint_lesion
from CovidCTAnalysisLib.threshold.lungs import segment_lungs
from scipy import ndimage as ndi

from training.parallel import map_processes
from training.real_cases import covid_ct_md_sample, real_group

HYBRID_VERSION = "3"  # bump when a (background, kind, seed) case changes: the cache keys on it
KINDS = ("covid", "pneumonia")
MIN_CLEAR_SLICES = 12
LOWPASS_SIGMA_MM = 2.0  # what the lesion replaces; finer detail (noise, small vessels) shows through
BRONCHOGRAM_HU = -900.0
ELASTIC_MAX_MM = (1.0, 4.0)  # range of the largest displacement of the elastic deformation
ELASTIC_CONTROL_MM = 40.0  # spacing of the random displacement's control points (its smoothness)


@dataclass(frozen=True)
class Background:
    """A lesion-free piece of a real chest CT, with its threshold lungs (same grid)."""

    case_id: str  # e.g. "P001-z121-147"
    patient: str
    image: sitk.Image
    lungs: sitk.Image


def clear_runs(slice_labels: list[int], min_len: int = MIN_CLEAR_SLICES) -> list[tuple[int, int]]:
    """(first, last+1) z ranges of at least ``min_len`` consecutive slices labelled 0 (clear)."""
    runs, start = [], None
    for z, value in enumerate([*slice_labels, 1]):
        if value == 0 and start is None:
            start = z
        elif value != 0 and start is not None:
            if z - start >= min_len:
                runs.append((start, z))
            start = None
    return runs


def patient_backgrounds(real) -> list[Background]:
    """The lesion-free backgrounds of one real case (``real_cases.RealCase``): the whole scan when it has no slice
    labels (normal001), else its clear runs that hold lung."""
    image = sitk.ReadImage(str(real.image_path))
    lungs = segment_lungs(image)
    labels = real.slice_labels
    runs = clear_runs(list(real.labels_or_clear(image.GetSize()[2])))
    lung_z = sitk.GetArrayViewFromImage(lungs).any(axis=(1, 2))
    out = []
    for z0, z1 in runs:
        if lung_z[z0:z1].sum() < MIN_CLEAR_SLICES:
            continue
        name = real.patient if labels is None else f"{real.patient}-z{z0}-{z1 - 1}"
        out.append(Background(name, real.patient, image[:, :, z0:z1], lungs[:, :, z0:z1]))
    return out


def real_backgrounds(shared_data: Path, exclude: frozenset[str] | set[str] = frozenset()) -> list[Background]:
    """normal001 whole plus the clear runs of P001 and cap001 that hold lung, minus ``exclude``'s patients."""
    return [b for real in covid_ct_md_sample(Path(shared_data), exclude) for b in patient_backgrounds(real)]


def _canvas(image: sitk.Image, lungs: np.ndarray, hu: np.ndarray) -> Canvas:
    """A phantom canvas over ``image`` (identity direction) in mm about the lungs' centre."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not np.allclose(np.abs(direction), np.eye(3), atol=1e-3):
        raise ValueError(f"hybrid backgrounds must be axis-aligned, got direction {image.GetDirection()}")
    centre = np.argwhere(lungs > 0).mean(axis=0)  # (z, y, x)
    axes = []
    for k, n in enumerate(image.GetSize()):
        index = np.arange(n) - centre[2 - k]
        axes.append(index * image.GetSpacing()[k] * direction[k, k])
    canvas = Canvas(axes[0], axes[1], axes[2], voxel_mm=float(min(image.GetSpacing())))
    canvas.hu = hu.copy()
    canvas.label = lungs.astype(np.uint8).copy()
    return canvas


def _site(canvas: Canvas, rng: np.random.Generator, side: int, depth_mm: tuple[float, float], lower: bool):
    """A lung voxel of ``side`` ``depth_mm`` inside the pleura (lower 60 % of the lung if ``lower``)."""
    lung = canvas.label == side
    depth = ndi.distance_transform_edt(lung, sampling=(abs(canvas.z[1] - canvas.z[0]), abs(canvas.y[1] - canvas.y[0]),
                                                       abs(canvas.x[1] - canvas.x[0])))
    ok = lung & (depth >= depth_mm[0]) & (depth <= depth_mm[1])
    zs = np.nonzero(lung.any(axis=(1, 2)))[0]
    if lower and zs.size:
        ok[zs[0] + int(0.6 * (zs[-1] - zs[0])) + 1:] = False  # z index grows superior
    cand = np.argwhere(ok) if ok.any() else np.argwhere(lung)
    if cand.size == 0:
        return None
    z, y, x = cand[rng.integers(len(cand))]
    return float(canvas.x[x]), float(canvas.y[y]), float(canvas.z[z])


def _rotation(rng: np.random.Generator) -> np.ndarray:
    a, b = rng.uniform(0.0, np.pi), rng.uniform(-0.3, 0.3)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _covid(canvas: Canvas, rng: np.random.Generator, field: SmoothField) -> int:
    count = int(rng.integers(2, 7))
    sides = [LEFT_LUNG, RIGHT_LUNG] + [int(rng.choice([LEFT_LUNG, RIGHT_LUNG])) for _ in range(count - 2)]
    for side in sides:
        lower = bool(rng.random() < 0.8)
        r = float(rng.uniform(10.0, 28.0)) * (1.0 if lower else 0.7)
        centre = _site(canvas, rng, side, (0.3 * r, 0.7 * r), lower)
        if centre is None:
            continue
        paint_lesion(canvas, Lesion(
            side=side, centre=centre, radii=(r, r * float(rng.uniform(0.55, 0.9)), float(rng.uniform(8.0, 22.0))),
            rotation=_rotation(rng), hu=float(rng.uniform(max(GGO_BAND_HU[0], -700.0), -450.0)),
            core=float(rng.uniform(0.3, 0.5)) if rng.random() < 0.35 else 0.0,
            core_hu=float(rng.uniform(-120.0, 10.0)), paving=bool(rng.random() < 0.35),
            edge=float(rng.uniform(0.2, 0.4)), field_offset=tuple(rng.uniform(-60.0, 60.0, 3))), field)
    return count


def _pneumonia(canvas: Canvas, rng: np.random.Generator, field: SmoothField) -> int:
    side = int(rng.choice([LEFT_LUNG, RIGHT_LUNG]))
    r = float(rng.uniform(35.0, 60.0))
    centre = _site(canvas, rng, side, (0.15 * r, 0.5 * r), bool(rng.random() < 0.7))
    if centre is None:
        return 0
    # A fissure: lung beyond a random plane through the lesion (offset) is kept out while painting.
    normal = rng.normal(size=3)
    normal /= np.linalg.norm(normal)
    offset = float(rng.uniform(0.2, 0.6)) * r
    x, y, z = canvas.x[None, None, :], canvas.y[None, :, None], canvas.z[:, None, None]
    beyond = ((x - centre[0]) * normal[0] + (y - centre[1]) * normal[1] + (z - centre[2]) * normal[2]) > offset
    keep = canvas.label.copy()
    canvas.label[beyond & (canvas.label == side)] = 0
    lesion = Lesion(side=side, centre=centre, radii=(r, r * float(rng.uniform(0.8, 1.1)), r * 0.9),
                    rotation=_rotation(rng), hu=float(rng.uniform(max(CONSOLIDATION_BAND_HU[0], -30.0), 45.0)),
                    core=0.0, core_hu=0.0, paving=False, edge=float(rng.uniform(0.08, 0.15)),
                    field_offset=tuple(rng.uniform(-60.0, 60.0, 3)))
    paint_lesion(canvas, lesion, field)
    canvas.label = np.where(canvas.label == LESION, LESION, keep)
    # Air bronchograms: a few tapering air tubes through the consolidation, pointing to the hilum.
    towards_hilum = -np.asarray(centre) / max(float(np.linalg.norm(centre)), 1e-6)
    for _ in range(int(rng.integers(2, 5))):
        a = np.asarray(centre) + rng.normal(0.0, 0.3 * r, 3)
        b = a + (towards_hilum + rng.normal(0.0, 0.4, 3)) * r
        w = tube_weight(x, y, z, a, b, float(rng.uniform(1.5, 3.0)), 0.8, max(0.5 * canvas.voxel_mm, 0.3))
        inside = canvas.label == LESION
        canvas.hu[inside] = (canvas.hu + (BRONCHOGRAM_HU - canvas.hu) * w)[inside]
    return 1


def paint_lesions(image: sitk.Image, lungs: sitk.Image, kind: str, seed: int,
                  salt: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(hu, labels, lesion count) with ``kind`` lesions painted into the lungs of a real CT (arrays z, y, x).

    ``salt`` (``make_hybrid``: from the background's id) makes one seed draw different lesions per background."""
    if kind not in KINDS:
        raise ValueError(f"hybrid kind {kind!r}; expected one of {KINDS}")
    rng = np.random.default_rng([seed, KINDS.index(kind), salt])
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    labels = sitk.GetArrayFromImage(lungs)
    sigma = [LOWPASS_SIGMA_MM / s for s in image.GetSpacing()[::-1]]
    low = ndi.gaussian_filter(hu, sigma)
    canvas = _canvas(image, labels, low)
    field = SmoothField(rng, step_mm=6.0, smooth_vox=1.0, lo=(-300.0, -300.0, -400.0), hi=(300.0, 300.0, 400.0))
    count = (_covid if kind == "covid" else _pneumonia)(canvas, rng, field)
    high = hu - low
    if kind == "pneumonia":
        # Consolidation hides the vessels (they are isodense with it) but not the noise: inside it only the
        # noise-sized part of the fine detail (within 2.5 robust SD of the lung's) shows through.
        lung = labels > 0
        sd = 1.4826 * float(np.median(np.abs(high[lung] - np.median(high[lung])))) if lung.any() else 0.0
        high = np.where(canvas.label == LESION, np.clip(high, -2.5 * sd, 2.5 * sd), high)
    # Where nothing was painted the CT stays bit for bit; elsewhere its fine detail rides on the lesion.
    return np.where(canvas.hu != low, canvas.hu + high, hu), canvas.label, count


def flip_left_right(hu: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror (z, y, x) arrays along x and swap labels 1/2, so that label 1 stays the patient's left lung.

    The backgrounds are axis-aligned (``_canvas`` refuses others), so array x is the patient's left-right axis."""
    return np.ascontiguousarray(hu[:, :, ::-1]), swap_left_right(np.ascontiguousarray(labels[:, :, ::-1]))


def elastic(hu: np.ndarray, labels: np.ndarray, spacing_zyx, rng: np.random.Generator,
            max_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random displacement whose largest component is ``max_mm``: image linear, labels nearest.

    Random control values every ``ELASTIC_CONTROL_MM`` are zoomed up cubically to the grid (smooth);
    both arrays are sampled at the same displaced points, so truth and HU stay aligned."""
    coarse = tuple(max(2, int(np.ceil(n * s / ELASTIC_CONTROL_MM)) + 1) for n, s in zip(hu.shape, spacing_zyx, strict=True))
    fields = [ndi.zoom(rng.normal(size=coarse), [n / c for n, c in zip(hu.shape, coarse, strict=True)], order=3,
                       mode="nearest", grid_mode=True) for _ in range(3)]
    peak = max(float(np.abs(f).max()) for f in fields) or 1.0
    grid = np.indices(hu.shape, dtype=np.float32)
    coords = [grid[k] + (fields[k][tuple(slice(0, n) for n in hu.shape)] * (max_mm / peak / spacing_zyx[k])).astype(
        np.float32) for k in range(3)]
    del grid
    hu = ndi.map_coordinates(hu, coords, order=1, mode="nearest").astype(np.float32)
    labels = ndi.map_coordinates(labels, coords, order=0, mode="nearest").astype(labels.dtype)
    return hu, labels


def augment(hu: np.ndarray, labels: np.ndarray, spacing_zyx: tuple[float, float, float],
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Seeded left-right mirror (half the time), elastic deformation, in-plane rotation (+-8 deg), blur or
    sharpening, now and then 2x thicker slices, and noise; the info says what was applied."""
    info: dict = {"flipped_left_right": bool(rng.random() < 0.5)}
    if info["flipped_left_right"]:
        hu, labels = flip_left_right(hu, labels)
    info["elastic_max_mm"] = round(float(rng.uniform(*ELASTIC_MAX_MM)), 2)
    hu, labels = elastic(hu, labels, spacing_zyx, rng, info["elastic_max_mm"])
    info["rotation_deg"] = round(float(rng.uniform(-8.0, 8.0)), 2)
    hu = ndi.rotate(hu, info["rotation_deg"], axes=(1, 2), reshape=False, order=1, mode="nearest")
    labels = ndi.rotate(labels, info["rotation_deg"], axes=(1, 2), reshape=False, order=0, mode="constant")
    kernel = rng.choice(["none", "blur", "sharpen"])
    amount = float(rng.uniform(0.4, 1.0))
    if kernel != "none":
        smooth = ndi.gaussian_filter(hu, [0.0, amount, amount])
        hu = smooth if kernel == "blur" else hu + 0.8 * (hu - smooth)
    info["kernel"] = f"{kernel} {amount:.2f}" if kernel != "none" else "none"
    info["thick_slices"] = bool(rng.random() < 0.3 and hu.shape[0] >= 4)
    if info["thick_slices"]:  # average neighbouring pairs along z
        hu = 0.5 * (hu + np.concatenate([hu[1:], hu[-1:]]))
    info["noise_sd_hu"] = round(float(rng.uniform(0.0, 25.0)), 1)
    hu = hu + rng.normal(0.0, info["noise_sd_hu"], hu.shape).astype(np.float32)
    return hu, labels, info


def make_hybrid(background: Background, kind: str, seed: int) -> tuple[sitk.Image, sitk.Image, dict]:
    """One hybrid case: (int16 HU image, uint8 truth 1/2/3, info) on the background's grid."""
    # Salted with the background: with one seed per background (make demo), an unsalted draw gave every
    # background the same flip, elastic strength and lesion count.
    salt = zlib.crc32(background.case_id.encode())
    hu, labels, count = paint_lesions(background.image, background.lungs, kind, seed, salt)
    rng = np.random.default_rng([seed, 7, KINDS.index(kind), salt])
    hu, labels, info = augment(hu, labels, background.image.GetSpacing()[::-1], rng)
    image = sitk.GetImageFromArray(np.clip(np.round(hu), -1024, 3071).astype(np.int16))
    truth = sitk.GetImageFromArray(labels.astype(np.uint8))
    for out in (image, truth):
        out.CopyInformation(background.image)
    info.update(background=background.case_id, patient=background.patient, kind=kind, seed=seed, lesions=count,
                lesion_ml=round(float((labels == LESION).sum() * np.prod(background.image.GetSpacing()) / 1000), 1))
    return image, truth, info


def hybrid_seg_cases(shared_data: Path, kinds: list[str], seeds: list[int], cache_dir: Path, log=None,
                     exclude: frozenset[str] | set[str] = frozenset()) -> list:
    """Segmenter cases (``segmenter_data.SegCase``) for every background x kind x seed, cached as NIfTI;
    ``exclude``'s real patients left out."""
    from training.segmenter_data import SegCase

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cases, missing = [], []
    for real in covid_ct_md_sample(Path(shared_data), exclude):
        # The names of a patient's backgrounds are kept beside its cases, so that a patient whose cases are all
        # cached is not read and segmented again (seconds per scan, twice per make demo)
        names_path = cache_dir / f"hybrid_v{HYBRID_VERSION}_{real.patient}_backgrounds.json"
        names = json.loads(names_path.read_text()) if names_path.is_file() else None
        backgrounds = None
        if names is None or not all(path.is_file() for name in names for kind in kinds for seed in seeds
                                    for path in _case_paths(cache_dir, name, kind, seed)):
            backgrounds = patient_backgrounds(real)
            names = [b.case_id for b in backgrounds]
            with atomic_path(names_path) as tmp:
                tmp.write_text(json.dumps(names))
        for i, name in enumerate(names):
            for kind in kinds:
                for seed in seeds:
                    image_path, truth_path = _case_paths(cache_dir, name, kind, seed)
                    if not (image_path.is_file() and truth_path.is_file()):
                        missing.append((backgrounds[i], kind, seed, image_path, truth_path))
                    cases.append(SegCase(f"hybrid-{name}-{kind}-{seed}", image_path, truth_path, "hybrid", True,
                                         group=real_group(real.patient)))

    def painted(_i, job, info):
        if log is not None:
            log("hybrids", f"hybrid {job[0].case_id} {job[1]} seed {job[2]}: {info}")

    map_processes(write_hybrid, missing, done=painted)  # ~5-35 s of one core each
    return cases


def _case_paths(cache_dir: Path, background_id: str, kind: str, seed: int) -> tuple[Path, Path]:
    """(image, truth) cache files of one hybrid case; the name carries ``HYBRID_VERSION``."""
    stem = cache_dir / f"hybrid_v{HYBRID_VERSION}_{background_id}_{kind}_{seed}"
    return Path(f"{stem}_ct.nii.gz"), Path(f"{stem}_truth.nii.gz")


def write_hybrid(background: Background, kind: str, seed: int, image_path: Path, truth_path: Path) -> dict:
    """Paint one hybrid case (``make_hybrid``) and write it; returns its info."""
    image, truth, info = make_hybrid(background, kind, seed)
    sitk.WriteImage(truth, str(truth_path), True)
    with atomic_path(image_path) as tmp:  # the image last, whole: its presence marks a case done
        sitk.WriteImage(image, str(tmp), True)
    return info
