"""Branching tubes of the phantoms: pulmonary vessels and airways.

Vessel trees grow from the hila towards the periphery, tapering and
bifurcating (Murray-like radius ratios) and staying inside their lung. They
matter for realism: vessels are what make naive HU lesion thresholds fail.
The trachea and main bronchi are air but *not* lung (label 0); the smaller
intrapulmonary bronchi are part of the lung, as in usual lung masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from CovidCTAnalysisLib.constants import AIR_HU, LEFT_LUNG, RIGHT_LUNG
from CovidCTAnalysisLib.phantom.body import Anatomy
from CovidCTAnalysisLib.phantom.canvas import Canvas, tube_box, tube_weight

VESSEL_HU = 40.0
AIRWAY_WALL_HU = 30.0

Segment = tuple[np.ndarray, np.ndarray, float, float]  # start, end, start radius, end radius

# Where the pulmonary arteries enter each lung (hilum) and where the veins leave it (towards the left atrium).
_ARTERY_ORIGIN = {RIGHT_LUNG: (-30.0, 8.0, 8.0), LEFT_LUNG: (36.0, 12.0, 18.0)}
_VEIN_ORIGIN = {RIGHT_LUNG: (-26.0, 14.0, -22.0), LEFT_LUNG: (32.0, 18.0, -15.0)}
_STEMS_PER_LUNG = 12  # roughly one per bronchopulmonary segment


@dataclass(frozen=True)
class Airways:
    main: list[tuple[tuple[float, float, float], tuple[float, float, float], float]]  # trachea, main bronchi
    branches: list[Segment]  # intrapulmonary bronchi (part of the lung)
    landmarks: dict[str, tuple[float, float, float]]  # normalized mm


def _unit(v) -> np.ndarray:
    """Unit vectors along the last axis."""
    v = np.asarray(v, dtype=np.float64)
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)


def grow_tree(anat: Anatomy, rng: np.random.Generator, side: int, origin, roots, min_radius: float,
              taper: float = 0.92, max_generations: int = 14) -> list[Segment]:
    """Grow a bifurcating tree inside lung ``side``, one generation at a time (vectorised).

    ``roots`` are (direction, radius) stems from ``origin``. Each branch tapers by ``taper`` and
    splits in two (radius ratios ~0.85 and ~0.72, 20-45 degrees apart, bent outwards) until the
    radius falls below ``min_radius``; a branch that would leave the lung is shortened or turned
    back inwards, or ends.
    """
    origin = np.asarray(origin, dtype=np.float64)
    dirs = _unit(np.array([d for d, _ in roots], dtype=np.float64))
    radii = np.array([r for _, r in roots], dtype=np.float64)
    lengths = radii * rng.uniform(4.0, 6.0, radii.size)
    starts = np.repeat(origin[None, :], radii.size, axis=0)
    segments: list[Segment] = []
    for _ in range(max_generations):
        n = radii.size
        if n == 0:
            break
        steps = dirs * lengths[:, None]
        # fallbacks at the lung's border: half the length, then half the length turned back inwards
        inward = _unit(dirs - 1.2 * _unit(starts - origin)) * lengths[:, None]
        candidates = np.concatenate([starts + steps, starts + 0.5 * steps, starts + 0.5 * inward])
        inside = (anat.lung_side(candidates[:, 0], candidates[:, 1], candidates[:, 2]) == side).reshape(3, n)
        keep = inside.any(axis=0)
        choice = np.argmax(inside, axis=0)
        ends = candidates.reshape(3, n, 3)[choice, np.arange(n)]
        turned = keep & (choice == 2)
        dirs = np.where(turned[:, None], _unit(ends - starts), dirs)
        starts, ends, dirs, radii = starts[keep], ends[keep], dirs[keep], radii[keep]
        end_radii = radii * taper
        segments.extend(zip(starts, ends, radii.tolist(), end_radii.tolist(), strict=True))
        # two children per branch, all random numbers drawn per generation (deterministic order)
        k = radii.size
        perp = _unit(np.cross(dirs, rng.standard_normal((k, 3))))
        outward = _unit(ends - origin)
        ratios = np.column_stack([rng.uniform(0.78, 0.92, k), rng.uniform(0.62, 0.82, k)])
        angles = np.deg2rad(rng.uniform(20.0, 45.0, (k, 2)))
        stretch = rng.uniform(6.0, 11.0, (k, 2))
        child_dirs, child_radii, child_lengths, child_starts = [], [], [], []
        for c, sign in ((0, 1.0), (1, -1.0)):
            r = end_radii * ratios[:, c]
            ok = r >= min_radius
            d = _unit(np.cos(angles[:, c:c + 1]) * dirs + sign * np.sin(angles[:, c:c + 1]) * perp + 0.3 * outward)
            child_dirs.append(d[ok])
            child_radii.append(r[ok])
            child_lengths.append(np.clip(r * stretch[:, c], 4.0, 40.0)[ok])
            child_starts.append(ends[ok])
        starts, dirs = np.concatenate(child_starts), np.concatenate(child_dirs)
        radii, lengths = np.concatenate(child_radii), np.concatenate(child_lengths)
    return segments


def spread_targets(anat: Anatomy, rng: np.random.Generator, side: int, count: int) -> np.ndarray:
    """``count`` points spread through lung ``side`` (farthest-point sampling of random lung points)."""
    sign = 1.0 if side == LEFT_LUNG else -1.0
    pts = np.column_stack([sign * rng.uniform(15.0, 160.0, 3000), rng.uniform(-100.0, 110.0, 3000),
                           rng.uniform(-150.0, 130.0, 3000)])
    pts = pts[anat.lung_side(pts[:, 0], pts[:, 1], pts[:, 2]) == side]
    chosen = [int(rng.integers(len(pts)))]
    dist = np.linalg.norm(pts - pts[chosen[0]], axis=1)
    for _ in range(count - 1):
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.linalg.norm(pts - pts[chosen[-1]], axis=1))
    return pts[chosen]


def paint_vessel_trees(canvas: Canvas, anat: Anatomy, rng: np.random.Generator) -> None:
    """Pulmonary arteries and veins, drawn only on lung voxels (they are part of the lung).

    Each lung gets one stem per spread-out target for each system, so the trees fill the lung
    instead of crowding round the hilum.
    """
    for origins in (_ARTERY_ORIGIN, _VEIN_ORIGIN):
        for side in (RIGHT_LUNG, LEFT_LUNG):
            origin = np.asarray(origins[side])
            targets = spread_targets(anat, rng, side, _STEMS_PER_LUNG)
            stems = [(t - origin, float(rng.uniform(2.8, 4.0))) for t in targets]
            tree = grow_tree(anat, rng, side, origin, stems, min_radius=0.45)
            _paint_segments(canvas, tree, VESSEL_HU, lung_only=True)


def _paint_segments(canvas: Canvas, segments, value: float, lung_only: bool, wall: float = 0.0,
                    clear_label: bool = False) -> None:
    soft = max(0.5 * canvas.voxel_mm, 0.3)
    for a, b, ra, rb in segments:
        ra, rb = ra + wall, rb + wall
        if max(ra, rb) < 0.2 * canvas.voxel_mm:
            continue  # far below the voxel size: would only add a faint smear
        box = canvas.box(*tube_box(a, b, max(ra, rb), soft))
        if box is None:
            continue
        sl, x, y, z = box
        w = tube_weight(x, y, z, a, b, ra, rb, soft)
        # a tube thinner than the voxel still carries its partial-volume share
        w *= min(1.0, 2.0 * max(ra, rb) / canvas.voxel_mm)
        hu = canvas.hu[sl]
        label = canvas.label[sl]
        where = (label > 0) if lung_only else (w > 0)
        hu[where] = (hu + (value - hu) * w)[where]
        if clear_label:
            label[w > 0.5] = 0


def airway_segments(anat: Anatomy, rng: np.random.Generator) -> Airways:
    carina = (2.0, 22.0, 40.0)
    top = (2.0, 18.0, 600.0)
    right_end = (-30.0, 26.0, 22.0)
    left_end = (36.0, 30.0, 12.0)
    main = [(top, carina, 8.5), (carina, right_end, 6.5), (carina, left_end, 6.0)]
    right = grow_tree(anat, rng, RIGHT_LUNG, right_end,
                      [((-0.3, 0.0, 1.0), 4.0), ((-0.5, 0.3, -1.0), 4.5), ((-0.6, -0.8, -0.3), 3.0)],
                      min_radius=1.0, max_generations=5)
    left = grow_tree(anat, rng, LEFT_LUNG, left_end,
                     [((0.3, 0.0, 1.0), 4.0), ((0.5, 0.3, -1.0), 4.5)], min_radius=1.0, max_generations=5)
    landmarks = {
        "carina": carina,
        "trachea": (2.0, 19.0, 90.0),  # mid trachea, above the lung apices' medial edge
        # distal main bronchi, already inside the lungs' outline (air, but not lung)
        "right_main_bronchus": tuple(float(v) for v in np.add(carina, 0.85 * np.subtract(right_end, carina))),
        "left_main_bronchus": tuple(float(v) for v in np.add(carina, 0.85 * np.subtract(left_end, carina))),
    }
    return Airways(main=main, branches=right + left, landmarks=landmarks)


def paint_airways(canvas: Canvas, airways: Airways) -> None:
    """Trachea and main bronchi (air, wall, not lung), then the intrapulmonary bronchi."""
    main = [(np.asarray(a), np.asarray(b), r, r) for a, b, r in airways.main]
    _paint_segments(canvas, main, AIRWAY_WALL_HU, lung_only=False, wall=2.0, clear_label=True)
    _paint_segments(canvas, main, AIR_HU, lung_only=False, clear_label=True)
    for a, b, ra, rb in airways.branches:
        _paint_segments(canvas, [(a, b, ra, rb)], AIRWAY_WALL_HU, lung_only=True, wall=0.25 * ra + 0.4)
        _paint_segments(canvas, [(a, b, ra, rb)], AIR_HU, lung_only=True)
