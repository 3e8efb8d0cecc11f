"""The shape of one synthetic adult chest, in normalized patient mm (no drawing).

Coordinates: x towards the patient's left, y towards the back, z towards the head (LPS), origin at the
chest centre, lengths of an average adult (the caller divides out the patient's scale). ``Anatomy`` holds a
seed's variations and answers shape questions (where the lungs, heart and diaphragm are); the renderer
(``anatomy``), the vessel growth (``vessels``) and the lesion placement (``lesions``) all ask it, so it sits
below them and imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from CovidCTAnalysisLib.constants import LEFT_LUNG, RIGHT_LUNG
from CovidCTAnalysisLib.phantom.canvas import ellipsoid_radius

MEDIASTINUM_X = 5.0  # the mediastinum sits slightly left of the midline
HORIZONTAL_FISSURE_Z = 0.0  # right lung: upper above, middle lobe below (in front of the oblique fissure)


def oblique_fissure_z(x, y):
    """z of the oblique (major) fissure: high at the back, low at the front; in an axial slice it runs
    from postero-medial to antero-lateral. Below it lies the lower lobe."""
    lateral = np.abs(x) - 72.0
    return (y - 35.0) + 0.45 * lateral - 0.002 * lateral**2


@dataclass(frozen=True)
class Anatomy:
    """Seeded variations of one adult chest (normalized mm)."""

    dome_right: float  # z of the right diaphragm dome (the liver pushes it up)
    dome_left: float
    lung_half_width: tuple[float, float]  # (left, right) lung half widths
    apex: float  # z of the lung apices
    heart_centre: tuple[float, float, float]
    heart_radii: tuple[float, float, float]
    heart_rotation: np.ndarray  # columns: heart axes in LPS
    body_axes: tuple[float, float]  # half width (x) and half depth (y) of the body outline
    fat_mm: float
    rib_pitch: float
    rib_top: float
    breast_mm: float  # breast depth (0 for none): varies the anterior outline and its tissue

    @staticmethod
    def from_rng(rng: np.random.Generator) -> Anatomy:
        dome_right = float(rng.uniform(-78.0, -64.0))
        turn = np.deg2rad(rng.uniform(-40.0, -25.0))  # long axis towards left-anterior
        tilt = np.deg2rad(rng.uniform(15.0, 30.0))  # apex pointing down
        rz = np.array([[np.cos(turn), -np.sin(turn), 0.0], [np.sin(turn), np.cos(turn), 0.0], [0.0, 0.0, 1.0]])
        ry = np.array([[np.cos(tilt), 0.0, np.sin(tilt)], [0.0, 1.0, 0.0], [-np.sin(tilt), 0.0, np.cos(tilt)]])
        return Anatomy(
            dome_right=dome_right,
            dome_left=dome_right - float(rng.uniform(8.0, 18.0)),
            lung_half_width=(float(rng.uniform(58.0, 64.0)), float(rng.uniform(66.0, 72.0))),
            apex=float(rng.uniform(112.0, 126.0)),
            heart_centre=(float(rng.uniform(18.0, 28.0)), float(rng.uniform(-34.0, -24.0)), float(rng.uniform(-60.0, -48.0))),
            heart_radii=tuple(float(v) for v in rng.uniform(0.92, 1.08, 3) * (62.0, 47.0, 52.0)),
            heart_rotation=rz @ ry,
            body_axes=(float(rng.uniform(160.0, 178.0)), float(rng.uniform(118.0, 130.0))),
            fat_mm=float(rng.uniform(8.0, 24.0)),
            rib_pitch=float(rng.uniform(23.0, 26.0)),
            rib_top=float(rng.uniform(118.0, 128.0)),
            breast_mm=float(rng.uniform(20.0, 45.0)) if rng.random() < 0.4 else 0.0,
        )

    def heart_radius(self, x, y, z):
        """Normalized heart ellipsoid radius (1 on the heart's surface)."""
        return ellipsoid_radius(x, y, z, self.heart_centre, self.heart_radii, self.heart_rotation)

    # --- shapes shared by the renderer, the vessel growth and the lesion placement ----------

    def lung_centre_x(self, label: int) -> float:
        return 72.0 if label == LEFT_LUNG else -72.0

    @staticmethod
    def ribcage_axes(z):
        """Outer half axes of the rib cage at height z (narrow at the apex, wide at the base)."""
        widen = np.clip(1.0 - 0.0011 * z, 0.80, 1.12)
        return 150.0 * widen, 104.0 * np.clip(1.0 - 0.0004 * z, 0.9, 1.05)

    def diaphragm(self, label: int, x, y):
        """z of the diaphragm under each (x, y): domes, lower towards the costophrenic recesses."""
        cx = self.lung_centre_x(label)
        width = self.lung_half_width[0 if label == LEFT_LUNG else 1]
        rr = np.minimum(((x - cx) / (width * 1.1)) ** 2 + ((y - 8.0) / 96.0) ** 2, 1.4)
        dome = self.dome_left if label == LEFT_LUNG else self.dome_right
        return dome - 32.0 * rr - 16.0 * np.clip((y - 8.0) / 90.0, 0.0, 1.0)

    def lung_side(self, x, y, z, heart: bool = True) -> np.ndarray:
        """0 outside the lungs, 1 (left) or 2 (right) inside; broadcasts over x, y, z.

        ``heart=False`` skips carving out the heart (the renderer does that inside the heart's box).
        """
        ax, ay = self.ribcage_axes(z)
        cav = (x / (ax - 9.0)) ** 2 + ((y - 8.0) / (ay - 9.0)) ** 2 < 1.0
        # mediastinum: a band, wide above the heart (great vessels, trachea), plus the spine with the
        # paravertebral muscles, the descending aorta and the oesophagus, round which the lungs wrap
        half = 13.0 + 15.0 / (1.0 + np.exp(-(z - 10.0) / 10.0))
        middle = np.abs(x - MEDIASTINUM_X) < half
        behind = ((x / 40.0) ** 2 + ((y - 82.0) / 45.0) ** 2 < 1.0) | ((x - 20.0) ** 2 + (y - 50.0) ** 2 < 16.0**2)
        behind |= (x + 4.0) ** 2 + (y - 44.0) ** 2 < 11.0**2
        cav = cav & ~middle & ~behind
        # the apices are domes set towards the back; the lungs are deeper and wider lower down
        taper = np.sqrt(np.clip(1.0 - ((np.maximum(z, 30.0) - 30.0) / (self.apex - 30.0)) ** 2, 0.0, 1.0))
        widen = np.clip(1.0 - 0.0012 * z, 0.85, 1.12)
        cy = 8.0 + 0.16 * np.maximum(z, 0.0)
        depth = 97.0 * np.clip(1.0 - 0.0008 * z, 0.9, 1.08)
        if heart:
            cav = cav & (self.heart_radius(x, y, z) >= 1.08)
        out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=np.uint8)
        yy = ((y - cy) / depth) ** 2
        for label, sign in ((LEFT_LUNG, 1.0), (RIGHT_LUNG, -1.0)):
            width = self.lung_half_width[0 if label == LEFT_LUNG else 1]
            ell = ((x - sign * 72.0) / width) ** 2 / widen**2 + yy < taper**2
            inside = ell & (sign * (x - MEDIASTINUM_X) > 0) & (z > self.diaphragm(label, x, y))
            out[inside & cav] = label
        return out
