"""Lesions of the synthetic phantoms, drawn into the lungs of a rendered canvas.

* COVID-19: several bilateral, peripheral (sub-pleural), lower-zone-predominant
  ground-glass opacities, some with crazy paving (thickened septa) or a
  consolidated core.
* Pneumonia: lobar consolidation of one lobe with air bronchograms, usually
  unilateral (now and then a small patch in the other lung).

Lesion voxels get label 3 (LESION); only lung voxels are ever relabelled.
Vessels that run through a lesion stay visible (HU = max of both).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from CovidCTAnalysisLib.constants import AIR_HU, CONSOLIDATION_BAND_HU, GGO_BAND_HU, LEFT_LUNG, LESION, RIGHT_LUNG
from CovidCTAnalysisLib.phantom.body import HORIZONTAL_FISSURE_Z, MEDIASTINUM_X, Anatomy, oblique_fissure_z
from CovidCTAnalysisLib.phantom.canvas import Canvas, SmoothField, ellipsoid_radius
from CovidCTAnalysisLib.phantom.vessels import grow_tree, tube_box, tube_weight


@dataclass(frozen=True)
class Lesion:
    side: int
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    rotation: np.ndarray
    hu: float  # ground glass (or consolidation) HU
    core: float  # radius fraction of a denser core, 0 for none
    core_hu: float
    paving: bool  # crazy paving: thickened interlobular septa
    edge: float  # soft border as a fraction of the radius
    field_offset: tuple[float, float, float]


def _inside(band: tuple[float, float], lo: float, hi: float) -> tuple[float, float]:
    """(lo, hi) kept within a constants.py HU band, so the phantoms agree with the threshold bands."""
    return max(lo, band[0]), min(hi, band[1])


def _rotation_z(a: float) -> np.ndarray:
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def lobe_of(x, y, z, side: int) -> np.ndarray:
    """0 upper, 1 middle (right lung only), 2 lower lobe (see ``body.oblique_fissure_z``)."""
    lower = z < oblique_fissure_z(x, y)
    middle = ~lower & (z < HORIZONTAL_FISSURE_Z) & (side == RIGHT_LUNG)
    return np.where(lower, 2, np.where(middle, 1, 0))


def _subpleural_centre(anat: Anatomy, rng: np.random.Generator, side: int, radius: float, lower: bool = True):
    """A centre just inside the chest wall of the lower (or upper) zone, posterior/lateral more often than not.

    Returns the centre and the in-plane angle of the outward direction (towards the pleura).
    """
    sign = 1.0 if side == LEFT_LUNG else -1.0
    t = np.arange(0.0, 170.0, 1.0)
    for _ in range(60):
        if lower:
            z = rng.uniform(min(anat.dome_left, anat.dome_right) - 10.0, -20.0)
        else:
            z = rng.uniform(0.0, 90.0)
        phi = np.deg2rad(rng.uniform(-70.0, 110.0))  # 0 lateral, 90 posterior
        u = np.array([sign * np.cos(phi), np.sin(phi), 0.0])
        start = np.array([anat.lung_centre_x(side), 8.0, z])
        pts = start[None, :] + t[:, None] * u[None, :]
        inside = np.nonzero(anat.lung_side(pts[:, 0], pts[:, 1], pts[:, 2]) == side)[0]
        if inside.size < 5:
            continue
        depth = rng.uniform(0.25, 0.6) * radius
        centre = pts[inside[-1]] - depth * u
        if anat.lung_side(centre[0], centre[1], centre[2]) == side:
            return tuple(float(v) for v in centre), float(np.arctan2(u[1], u[0]))
    raise RuntimeError(f"phantom: found no sub-pleural lesion site in lung {side}")  # not reached in practice


def covid_lesions(anat: Anatomy, rng: np.random.Generator) -> list[Lesion]:
    count = int(rng.integers(3, 9))
    sides = [LEFT_LUNG, RIGHT_LUNG] + [int(rng.choice([LEFT_LUNG, RIGHT_LUNG], p=[0.45, 0.55])) for _ in range(count - 2)]
    lesions = []
    for side in sides:
        lower = bool(rng.random() < 0.8)  # lower-zone predominant, and the lower lesions are larger
        r_plane = float(rng.uniform(12.0, 30.0)) * (1.0 if lower else 0.7)
        # flattened against the pleura: the long axis runs along the chest wall
        radii = (r_plane, r_plane * float(rng.uniform(0.55, 0.9)), float(rng.uniform(10.0, 24.0)))
        core = float(rng.uniform(0.3, 0.5)) if rng.random() < 0.4 else 0.0
        centre, outward = _subpleural_centre(anat, rng, side, radii[1], lower)
        lesions.append(Lesion(
            side=side, centre=centre, radii=radii,
            rotation=_rotation_z(outward + np.pi / 2.0 + rng.uniform(-0.3, 0.3)), hu=float(rng.uniform(*_inside(GGO_BAND_HU, -680.0, -450.0))), core=core,
            core_hu=float(rng.uniform(-120.0, 10.0)), paving=bool(rng.random() < 0.35),
            edge=float(rng.uniform(0.2, 0.4)), field_offset=tuple(rng.uniform(-60.0, 60.0, 3)),
        ))
    return lesions


def pneumonia_lesions(anat: Anatomy, rng: np.random.Generator) -> tuple[list[Lesion], int, int]:
    """One lobar consolidation (plus, now and then, a small contralateral patch); returns (lesions, side, lobe)."""
    side = int(rng.choice([LEFT_LUNG, RIGHT_LUNG]))
    lobes = [2, 0, 1] if side == RIGHT_LUNG else [2, 0]
    weights = [0.6, 0.25, 0.15] if side == RIGHT_LUNG else [0.65, 0.35]
    lobe = int(rng.choice(lobes, p=weights))
    sign = 1.0 if side == LEFT_LUNG else -1.0
    pts = np.column_stack([sign * rng.uniform(20.0, 150.0, 600), rng.uniform(-90.0, 105.0, 600),
                           rng.uniform(-130.0, 120.0, 600)])
    ok = (anat.lung_side(pts[:, 0], pts[:, 1], pts[:, 2]) == side) & (lobe_of(pts[:, 0], pts[:, 1], pts[:, 2], side) == lobe)
    centre = pts[np.nonzero(ok)[0][0]] if ok.any() else np.array([sign * 80.0, 40.0, -50.0])
    r = float(rng.uniform(60.0, 95.0))  # large: the fissures, not the blob, bound most of the consolidation
    lesions = [Lesion(
        side=side, centre=tuple(float(v) for v in centre), radii=(r, r * float(rng.uniform(0.8, 1.1)), r * 0.9),
        rotation=_rotation_z(rng.uniform(0.0, np.pi)), hu=float(rng.uniform(*_inside(CONSOLIDATION_BAND_HU, -30.0, 45.0))), core=0.0, core_hu=0.0, paving=False,
        edge=float(rng.uniform(0.08, 0.15)), field_offset=tuple(rng.uniform(-60.0, 60.0, 3)),
    )]
    if rng.random() < 0.25:
        other = RIGHT_LUNG if side == LEFT_LUNG else LEFT_LUNG
        small = float(rng.uniform(6.0, 11.0))
        lesions.append(Lesion(
            side=other, centre=_subpleural_centre(anat, rng, other, small)[0], radii=(small, small, small),
            rotation=np.eye(3), hu=float(rng.uniform(-550.0, -350.0)), core=0.0, core_hu=0.0, paving=False,
            edge=0.25, field_offset=tuple(rng.uniform(-60.0, 60.0, 3)),
        ))
    return lesions, side, lobe


def paint_lesion(canvas: Canvas, lesion: Lesion, field: SmoothField, lobe: int | None = None) -> None:
    """Blend one lesion into the lung voxels of its box; label 3 inside its mid-border."""
    reach = max(lesion.radii) * 1.4
    box = canvas.box(np.subtract(lesion.centre, reach), np.add(lesion.centre, reach))
    if box is None:
        return
    sl, x, y, z = box
    off = lesion.field_offset
    rho = ellipsoid_radius(x, y, z, lesion.centre, lesion.radii, lesion.rotation)
    # irregular outline: the radius wobbles with a smooth random field
    rho = rho * (1.0 + 0.22 * field.sample(x.ravel() + off[0], y.ravel() + off[1], z.ravel() + off[2]))
    label = canvas.label[sl]
    # only the lesion's own lung (a large blob near the midline must not spill into the other lung)
    own_half = (x - MEDIASTINUM_X) * (1.0 if lesion.side == LEFT_LUNG else -1.0) > 0.0
    lung = (label == lesion.side) | ((label == LESION) & own_half)
    if lobe is not None:
        lung &= lobe_of(x, y, z, lesion.side) == lobe
    weight = np.clip((1.0 - rho) / lesion.edge, 0.0, 1.0)
    c = lesion.centre
    fine = field.sample(2.5 * (x.ravel() - c[0]) - off[1], 2.5 * (y.ravel() - c[1]) + off[2],
                        2.5 * (z.ravel() - c[2]) + off[0])
    target = lesion.hu + 55.0 * fine  # heterogeneous ground glass
    if lesion.paving:
        # thickened septa: thin planes every ~ 6 mm in three directions (polygonal "paving stones")
        q = np.stack(np.broadcast_arrays(x, y, z))
        septa = np.zeros(rho.shape, dtype=bool)
        for k in range(3):
            # the smooth field bends the septa so that the "stones" are irregular polygons
            s = (q[0] * lesion.rotation[0, k] + q[1] * lesion.rotation[1, k] + q[2] * lesion.rotation[2, k]) / (5.0 + k)
            s = s + 0.45 * fine
            septa |= np.abs(s - np.round(s)) < 0.09
        target = target + 170.0 * septa
    if lesion.core > 0.0:
        core_w = np.clip((lesion.core - rho) / 0.15, 0.0, 1.0)
        target = target + (lesion.core_hu - target) * core_w
    hu = canvas.hu[sl]
    blended = hu + (target - hu) * weight
    hu[lung] = np.maximum(hu, blended)[lung]
    label[lung & (rho < 1.0 - 0.5 * lesion.edge)] = LESION


def paint_air_bronchograms(canvas: Canvas, anat: Anatomy, rng: np.random.Generator, lesion: Lesion) -> None:
    """Air-filled bronchi that stay visible inside a consolidation (HU set only on lesion voxels)."""
    hilum = np.array([36.0, 30.0, 12.0]) if lesion.side == LEFT_LUNG else np.array([-30.0, 26.0, 22.0])
    centre = np.asarray(lesion.centre)
    stem = centre - hilum
    segments = grow_tree(anat, rng, lesion.side, hilum + 0.3 * stem,
                         [(stem + rng.normal(0, 15, 3), 3.0), (stem + rng.normal(0, 25, 3), 2.5)],
                         min_radius=0.8, taper=0.85, max_generations=7)
    soft = max(0.5 * canvas.voxel_mm, 0.3)
    for a, b, ra, rb in segments:
        box = canvas.box(*tube_box(a, b, max(ra, rb), soft))
        if box is None:
            continue
        sl, x, y, z = box
        w = tube_weight(x, y, z, a, b, ra, rb, soft) * min(1.0, 2.0 * ra / canvas.voxel_mm)
        hu = canvas.hu[sl]
        inside = canvas.label[sl] == LESION
        hu[inside] = (hu + (AIR_HU + 80.0 - hu) * w)[inside]


def render_lesions(canvas: Canvas, anat: Anatomy, kind: str, rng: np.random.Generator) -> list[Lesion]:
    """Draw the lesions of ``kind`` ("normal" draws none); returns what was drawn."""
    field = SmoothField(rng, step_mm=6.0, smooth_vox=1.0, lo=(-300.0, -260.0, -300.0), hi=(300.0, 260.0, 300.0))
    if kind == "covid":
        lesions = covid_lesions(anat, rng)
        for lesion in lesions:
            paint_lesion(canvas, lesion, field)
        return lesions
    if kind == "pneumonia":
        lesions, _side, lobe = pneumonia_lesions(anat, rng)
        paint_lesion(canvas, lesions[0], field, lobe=lobe)
        paint_air_bronchograms(canvas, anat, rng, lesions[0])
        for lesion in lesions[1:]:
            paint_lesion(canvas, lesion, field)
        return lesions
    return []
