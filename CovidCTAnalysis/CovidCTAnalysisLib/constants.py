"""Named constants shared by the core, training and the Slicer module.

Label values, names, colours, terminology, HU bands and class names live here
and nowhere else, so that a labelmap never travels without its names.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- Labels (patient's left/right) -------------------------------------------------
BACKGROUND = 0
LEFT_LUNG = 1
RIGHT_LUNG = 2
LESION = 3

LABEL_NAMES: dict[int, str] = {
    LEFT_LUNG: "Left lung",
    RIGHT_LUNG: "Right lung",
    LESION: "Lesion",
}


@dataclass(frozen=True)
class SegmentTerminology:
    """DICOM coded concepts (SNOMED CT) for one segment.

    Used by the ``.seg.nrrd`` writer (Slicer terminology string) and the DICOM
    SEG writer, so both describe a segment the same way.
    """

    category: tuple[str, str, str]  # (code value, scheme, meaning)
    type: tuple[str, str, str]
    anatomic_region: tuple[str, str, str] | None = None
    color_rgb: tuple[int, int, int] = (128, 128, 128)


TERMINOLOGY: dict[int, SegmentTerminology] = {
    LEFT_LUNG: SegmentTerminology(
        category=("123037004", "SCT", "Anatomical Structure"),
        type=("44029006", "SCT", "Left lung"),
        color_rgb=(128, 174, 128),
    ),
    RIGHT_LUNG: SegmentTerminology(
        category=("123037004", "SCT", "Anatomical Structure"),
        type=("3341006", "SCT", "Right lung"),
        color_rgb=(241, 214, 145),
    ),
    LESION: SegmentTerminology(
        # Ground-glass opacity and consolidation are both "lesion" here.
        category=("49755003", "SCT", "Morphologically Altered Structure"),
        type=("52988006", "SCT", "Lesion"),
        anatomic_region=("39607008", "SCT", "Lung"),
        color_rgb=(216, 101, 79),
    ),
}

# --- Classes -------------------------------------------------------------------------
CLASS_NAMES: tuple[str, str, str] = ("Normal", "Pneumonia", "COVID-19")
COVID_CLASS = "COVID-19"

# --- Hounsfield units ----------------------------------------------------------------
# Every HU band used by the threshold method and the phantoms is stated here, once.
AIR_HU = -1000.0
BODY_THRESHOLD_HU = -500.0  # soft tissue and bone above, air and lung below
LUNG_BAND_HU = (-1024.0, -500.0)  # aerated lung parenchyma (and airways)
GGO_BAND_HU = (-750.0, -300.0)  # ground-glass opacity
CONSOLIDATION_BAND_HU = (-300.0, 100.0)  # consolidation
VESSEL_MIN_HU = -100.0  # in-lung voxels denser than this are vessel candidates
# Dependent density and partial volume at the lung edge: accepted as lung only
# next to aerated lung (threshold method), never as a seed of its own.
DENSE_LUNG_MAX_HU = -300.0

# Windows as (level, width) used to build classifier inputs: lung, mediastinum, GGO.
DEFAULT_CLASSIFIER_WINDOWS: tuple[tuple[float, float], ...] = (
    (-600.0, 1500.0),
    (40.0, 400.0),
    (-500.0, 700.0),
)
# HU clip range scaled to [0, 1] for the segmenter.
DEFAULT_SEGMENTER_HU_RANGE = (-1024.0, 400.0)

# --- Input sanity limits ---------------------------------------------------------------
MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 20.0
# A pair of adult lungs spans at least ~ 120 mm left-right and ~ 60 mm cranio-caudal
# even in a cropped scan; anything smaller cannot hold lungs.
MIN_EXTENT_MM = (120.0, 80.0, 40.0)  # (x, y, z)
# Below this much lung (both together) a scan is flagged as perhaps not covering the chest: an adult chest CT
# shows several litres, and even a scan cut off at the lung bases ~1 L (an abdomen CT with the bases: 18 mL).
LOW_LUNG_ML = 400.0
PLAUSIBLE_HU_RANGE = (-3100.0, 32767.0)
# Largest scan analysed, checked from the header before any pixel is read: the analysis peaks at about
# 25 bytes per voxel (1.98 GB for 512x512x300, README benchmark), so 160 M voxels keeps it near the 4 GB target.
MAX_VOXELS = 160_000_000
PEAK_BYTES_PER_VOXEL = 25

# How long `make demo` / the Slicer panel's "Train the demo models here" took where measured (README, "The two
# commands": 16 min 42 s and 18 min 0 s with AVX512-BF16, phantoms only; 21 min 10 s for training.demo (22 min 42 s
# with the .venv) with AMX/AVX512-BF16 and the real CTs; 55, 63 and 62 min on a 2-core AVX2 CPU).
# training.demo prints it before training when its work folder holds no full run yet; the panel says it too.
DEMO_TRAINING_MEASURED = ("about 21 minutes on a 2-core CPU with AVX512-BF16 (all three models, with real CT "
                          "backgrounds; 16-18 minutes for the classifier and the segmenter on phantoms alone), and "
                          "55-63 minutes on a 2-core CPU without AVX-512")
