"""Drawing the normal chest anatomy of the synthetic phantoms, in normalized patient mm.

Coordinates: x towards the patient's left, y towards the back, z towards the
head (LPS), origin at the chest centre, lengths of an average adult (the
patient's scale is divided out by the caller). Everything that needs the whole
volume is written for broadcast coordinate vectors (see ``canvas``); the
shape itself (``Anatomy``) is in ``body``;
small structures are drawn inside their bounding boxes.
"""

from __future__ import annotations

import numpy as np

from CovidCTAnalysisLib.constants import AIR_HU, LEFT_LUNG, RIGHT_LUNG
from CovidCTAnalysisLib.phantom.body import HORIZONTAL_FISSURE_Z, MEDIASTINUM_X, Anatomy, oblique_fissure_z
from CovidCTAnalysisLib.phantom.canvas import Canvas, SmoothField, ellipsoid_radius, tube_box, tube_weight
from CovidCTAnalysisLib.phantom.vessels import airway_segments, paint_airways, paint_vessel_trees

# Tissue HU (non-contrast CT). Adult values; see DEVELOPERS.md "Synthetic chest phantoms".
FAT_HU = -95.0
MUSCLE_HU = 45.0
BLOOD_HU = 40.0
LIVER_HU = 58.0
SPLEEN_HU = 45.0
CSF_HU = 12.0
CARTILAGE_HU = 120.0
CANCELLOUS_HU = 240.0
CORTICAL_HU = 800.0
VERTEBRAL_CORTEX_HU = 650.0
POSTERIOR_ARCH_HU = 600.0  # laminae, spinous and transverse processes (thin, mostly cortical)
SCAPULA_HU = 550.0
DISC_HU = 85.0
LUNG_HU = -870.0  # parenchyma without vessels; the vessels bring the lung mean to about -840
TABLE_HU = 300.0
FOAM_HU = -850.0

FISSURE_HU = 250.0  # added by a fissure (two pleural layers, ~1 mm) at full voxel coverage


def render_anatomy(canvas: Canvas, anat: Anatomy, rng: np.random.Generator, texture: SmoothField) -> dict:
    """Draw body, lungs, bones, mediastinum, airways and vessels; return landmarks (normalized mm)."""
    _render_slabs(canvas, anat, texture)
    _paint_spine_and_sternum(canvas)
    _paint_scapulae(canvas)
    _paint_breasts(canvas, anat, texture)
    _paint_mediastinum(canvas, anat)
    _paint_abdomen(canvas, anat)
    airways = airway_segments(anat, rng)
    paint_airways(canvas, airways)
    paint_vessel_trees(canvas, anat, rng)
    # a homogeneous spot in the liver (noise measurements)
    return dict(airways.landmarks, liver=(-60.0, 3.0, anat.dome_right - 35.0))


def _render_slabs(canvas: Canvas, anat: Anatomy, texture: SmoothField) -> None:
    bx, by = anat.body_axes
    x, y = canvas.x[None, :], canvas.y[:, None]
    # z-independent 2-D plane: air, table, foam, fat, muscle
    shape = (canvas.y.size, canvas.x.size)
    plane = np.full(shape, AIR_HU, dtype=np.float32)
    table_top = 5.0 + by + 6.0 + 0.0006 * x**2
    plane[(y > table_top) & (y < table_top + 8.0) & (np.abs(x) < 230.0)] = TABLE_HU
    plane[(y > table_top - 10.0) & (y <= table_top) & (np.abs(x) < 200.0)] = FOAM_HU  # mattress
    p = 2.4
    body = np.abs(x / bx) ** p + np.abs((y - 5.0) / by) ** p < 1.0
    inner = np.abs(x / (bx - anat.fat_mm)) ** p + np.abs((y - 5.0) / (by - anat.fat_mm * 0.7)) ** p < 1.0
    plane[body] = FAT_HU
    plane[inner] = MUSCLE_HU
    lung_base = (LUNG_HU + 0.35 * (canvas.y - 8.0))[None, :, None]  # denser where dependent (posterior)
    planes = texture.plane_stack(canvas.x, canvas.y)
    fissure_xy = oblique_fissure_z(x, y)[None, :, :]
    for sl, xs, ys, zs in canvas.slabs():
        hu = canvas.hu[sl]
        hu[:] = plane
        ax, ay = anat.ribcage_axes(zs)
        rho = (xs / ax) ** 2 + ((ys - 8.0) / ay) ** 2
        cavity = rho < ((ax - 9.0) / ax) ** 2
        cavity &= body
        hu[cavity] = FAT_HU + 10.0  # mediastinal fat, overdrawn by organs below
        lungs = anat.lung_side(xs, ys, zs, heart=False)
        canvas.label[sl] = lungs
        in_lung = lungs > 0
        tex = texture.from_planes(planes, zs.ravel())
        hu[in_lung] = (lung_base + 18.0 * tex + _fissures(xs, ys, zs, fissure_xy, canvas.voxel_mm))[in_lung]
        _paint_ribs(hu, canvas.label[sl], anat, xs, ys, zs, rho, ax, ay)
    r = max(anat.heart_radii) * 1.1
    box = canvas.box(np.subtract(anat.heart_centre, r), np.add(anat.heart_centre, r))
    if box is not None:
        sl, x, y, z = box
        canvas.label[sl][anat.heart_radius(x, y, z) < 1.08] = 0


def _fissures(x, y, z, fissure_xy, voxel_mm: float):
    """HU added by the oblique fissures and the right horizontal fissure: thin sheets, partial volume."""
    soft = max(0.5 * voxel_mm, 0.5)
    gain = FISSURE_HU * min(1.0, 1.0 / soft)
    # distance to the oblique fissure along its normal (|grad| of z - f(x, y) is about 1.5)
    oblique = np.clip(1.0 - np.abs(z - fissure_xy) / (1.5 * soft), 0.0, 1.0)
    horizontal = np.clip(1.0 - np.abs(z - HORIZONTAL_FISSURE_Z) / soft, 0.0, 1.0)
    horizontal = horizontal * ((x < MEDIASTINUM_X) & (z > fissure_xy))
    return gain * np.maximum(oblique, horizontal)


def _paint_ribs(hu, label, anat: Anatomy, x, y, z, rho, ax, ay) -> None:
    # Each rib runs round the chest wall and drops ~45 mm from the spine to the front.
    # Only voxels of the thin shell that holds the ribs are evaluated.
    radius_mm = 0.5 * (ax + ay)
    dr = (np.sqrt(rho) - 1.0) * radius_mm + 5.0  # 0 on the ribs' centre line, 5 mm inside the rib cage outline
    zi, yi, xi = np.nonzero(np.abs(dr) < 4.5)
    dr = dr[zi, yi, xi]
    xs, ys, zs = x.ravel()[xi], y.ravel()[yi] - 8.0, z.ravel()[zi]
    sin_t = ys / np.sqrt(xs**2 + ys**2 + 1e-6)
    drop = 45.0 * (1.0 - sin_t) / 2.0
    u = (anat.rib_top - drop - zs) / anat.rib_pitch
    index = np.round(u)
    dz = (u - index) * anat.rib_pitch
    e = (dr / 4.5) ** 2 + (dz / 6.0) ** 2
    rib = (e < 1.0) & (index >= 0) & (index <= 11) & (np.abs(xs) > 24.0)
    values = np.where(sin_t < -0.75, CARTILAGE_HU, np.where(e > 0.45, CORTICAL_HU, CANCELLOUS_HU))
    zi, yi, xi = zi[rib], yi[rib], xi[rib]
    label[zi, yi, xi] = 0
    hu[zi, yi, xi] = values[rib]


def _paint_spine_and_sternum(canvas: Canvas) -> None:
    box = canvas.box((-45.0, 48.0, -1e4), (45.0, 132.0, 1e4))
    if box is not None:
        sl, x, y, z = box
        hu, label = canvas.hu[sl], canvas.label[sl]
        body_r = np.sqrt((x / 21.0) ** 2 + ((y - 70.0) / 17.0) ** 2)
        disc = np.mod(z, 27.0) < 5.0
        canal_r = np.sqrt(x**2 + (y - 100.0) ** 2)
        arch = (canal_r >= 9.0) & (canal_r < 15.0)
        spinous = (np.abs(x) < 4.0) & (y > 105.0) & (y < 124.0) & ~disc
        transverse = (np.abs(x) < 38.0) & (np.abs(y - 98.0) < 5.0) & ~disc
        bone = (body_r < 1.0) | arch | spinous | transverse
        values = np.where(body_r < 0.86, CANCELLOUS_HU, VERTEBRAL_CORTEX_HU)
        values = np.where(disc & (body_r < 1.0), DISC_HU, values)
        values = np.where(arch | spinous | transverse, POSTERIOR_ARCH_HU, values)
        hu[bone] = np.broadcast_to(values, bone.shape)[bone]
        hu[np.broadcast_to(canal_r < 9.0, hu.shape)] = CSF_HU
        label[bone] = 0
    box = canvas.box((-16.0, -116.0, -95.0), (16.0, -96.0, 110.0))
    if box is not None:
        sl, x, y, z = box
        core = (np.abs(x) < 12.0) & (np.abs(y + 106.0) < 5.0) & (z > -93.0) & (z < 108.0)
        shell = (np.abs(x) < 14.0) & (np.abs(y + 106.0) < 7.0) & (z > -95.0) & (z < 110.0)
        canvas.hu[sl][shell] = CORTICAL_HU * 0.8
        canvas.hu[sl][core] = CANCELLOUS_HU
        canvas.label[sl][shell] = 0


def _paint_breasts(canvas: Canvas, anat: Anatomy, texture: SmoothField) -> None:
    """Fat with strands of glandular tissue in front of the pectoral muscles (some seeds only)."""
    if anat.breast_mm <= 0.0:
        return
    bx, by = anat.body_axes
    for sign in (1.0, -1.0):
        # supine: flattened and falling outwards; centred just under the skin so that it bulges out
        cx = sign * 85.0
        skin = 5.0 - by * (1.0 - abs(cx / bx) ** 2.4) ** (1.0 / 2.4)
        centre = (cx, skin + 8.0, -25.0)
        radii = (68.0, anat.breast_mm + 8.0, 58.0)
        box = canvas.box(np.subtract(centre, radii), np.add(centre, radii))
        if box is None:
            continue
        sl, x, y, z = box
        inside = ellipsoid_radius(x, y, z, centre, radii) < 1.0
        inside &= canvas.label[sl] == 0
        hu = canvas.hu[sl]
        inside &= (hu < -500.0) | (np.abs(hu - FAT_HU) < 1.0)  # air in front, or the subcutaneous fat
        glandular = np.clip(0.5 + 0.6 * texture.sample(1.5 * x.ravel(), 1.5 * (y.ravel() - centre[1]), 1.5 * z.ravel()), 0.0, 1.0)
        hu[inside] = (FAT_HU + (35.0 - FAT_HU) * glandular ** 2)[inside]


def _paint_scapulae(canvas: Canvas) -> None:
    """Thin bone plates behind the upper ribs, drawn only inside the body."""
    for sign in (1.0, -1.0):
        box = canvas.box((min(sign * 50.0, sign * 140.0), 75.0, 15.0), (max(sign * 50.0, sign * 140.0), 130.0, 130.0))
        if box is None:
            continue
        sl, x, y, z = box
        a, b = np.array([sign * 55.0, 122.0]), np.array([sign * 132.0, 84.0])
        u = (b - a) / np.linalg.norm(b - a)
        along = (x - a[0]) * u[0] + (y - a[1]) * u[1]
        across = -(x - a[0]) * u[1] + (y - a[1]) * u[0]
        reach = 85.0 * np.clip((z - 15.0) / 70.0, 0.0, 1.0)  # triangular: narrow at the inferior angle
        plate = (np.abs(across) < 3.0) & (along > 0.0) & (along < reach) & (z < 125.0)
        hu = canvas.hu[sl]
        bone = plate & (hu > -300.0) & (canvas.label[sl] == 0)
        hu[bone] = SCAPULA_HU


def _paint_mediastinum(canvas: Canvas, anat: Anatomy) -> None:
    soft = 1.2 * canvas.voxel_mm
    # heart with a rim of pericardial fat
    r = max(anat.heart_radii) * 1.15
    c = anat.heart_centre
    box = canvas.box(np.subtract(c, r), np.add(c, r))
    if box is not None:
        sl, x, y, z = box
        er = ellipsoid_radius(x, y, z, c, anat.heart_radii, anat.heart_rotation)
        free = canvas.label[sl] == 0
        canvas.hu[sl][(er < 1.08) & free] = FAT_HU
        canvas.hu[sl][(er < 1.0) & free] = BLOOD_HU
    # oesophagus (with a little air), great vessels: drawn only outside the lungs
    tubes = [
        ((-4.0, 44.0, -160.0), (-4.0, 44.0, 400.0), 7.0, BLOOD_HU),  # oesophagus wall
        ((-4.0, 44.0, -160.0), (-4.0, 44.0, 400.0), 2.0, AIR_HU),
        ((20.0, 50.0, -400.0), (20.0, 50.0, 55.0), 12.0, BLOOD_HU),  # descending aorta
        ((20.0, 50.0, 55.0), (26.0, 8.0, 76.0), 12.0, BLOOD_HU),  # arch, passing left of the trachea
        ((26.0, 8.0, 76.0), (5.0, -22.0, 55.0), 13.0, BLOOD_HU),
        ((5.0, -22.0, 55.0), (10.0, -25.0, -25.0), 15.0, BLOOD_HU),  # ascending aorta
        ((18.0, 0.0, 82.0), (-10.0, -8.0, 400.0), 6.0, BLOOD_HU),  # brachiocephalic trunk
        ((28.0, 10.0, 80.0), (30.0, 20.0, 400.0), 4.5, BLOOD_HU),  # left subclavian artery
        ((-25.0, -18.0, -30.0), (-24.0, -15.0, 400.0), 10.0, BLOOD_HU),  # superior vena cava
        ((15.0, -45.0, -30.0), (10.0, -20.0, 18.0), 13.0, BLOOD_HU),  # pulmonary trunk
        ((10.0, -20.0, 18.0), (-30.0, 8.0, 8.0), 10.0, BLOOD_HU),  # right pulmonary artery
        ((10.0, -20.0, 18.0), (36.0, 12.0, 18.0), 10.0, BLOOD_HU),  # left pulmonary artery
    ]
    for a, b, radius, value in tubes:
        box = canvas.box(*tube_box(a, b, radius, soft))
        if box is None:
            continue
        sl, x, y, z = box
        w = tube_weight(x, y, z, a, b, radius, radius, soft)
        free = canvas.label[sl] == 0
        hu = canvas.hu[sl]
        hu[free] = (hu + (value - hu) * w)[free]


def _paint_abdomen(canvas: Canvas, anat: Anatomy) -> None:
    """Liver under the right dome, spleen and a stomach with a gas bubble under the left."""
    top = max(anat.dome_right, anat.dome_left) + 2.0
    box = canvas.box((-200.0, -200.0, -1e4), (200.0, 200.0, top))
    if box is None:
        return
    sl, x, y, z = box
    ax, ay = anat.ribcage_axes(z)
    inside = (x / (ax - 9.0)) ** 2 + ((y - 8.0) / (ay - 9.0)) ** 2 < 1.0
    below = np.where(x < MEDIASTINUM_X, z < anat.diaphragm(RIGHT_LUNG, x, y), z < anat.diaphragm(LEFT_LUNG, x, y))
    organ = inside & below & (canvas.label[sl] == 0) & ~((x**2 + (y - 70.0) ** 2) < 30.0**2)
    hu = canvas.hu[sl]
    values = np.where(x < 25.0, LIVER_HU, np.where(y > 30.0, SPLEEN_HU, 25.0))
    hu[organ] = np.broadcast_to(values, organ.shape)[organ]
    centre = (62.0, -25.0, anat.dome_left - 48.0)
    stomach = organ & (ellipsoid_radius(x, y, z, centre, (38.0, 34.0, 30.0)) < 1.0)
    hu[stomach & (z > centre[2] + 12.0)] = AIR_HU
    hu[stomach & (z <= centre[2] + 12.0)] = 15.0
