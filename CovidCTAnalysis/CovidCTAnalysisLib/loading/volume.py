"""The image type that travels through the core.

A ``CTVolume`` is a SimpleITK image (HU, LPS physical geometry) plus where it
came from. SimpleITK arrays are (z, y, x); spacing/origin/direction are in
(x, y, z) LPS order. Slicer's RAS is converted only at the MRML boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CovidCTAnalysisLib.geometry import patient_axes


@dataclass(frozen=True)
class DicomSource:
    """What a DICOM SEG needs to reference its source series.

    ``instance_files`` and ``sop_instance_uids`` are ordered like the image's z
    index (after sorting by ImagePositionPatient along the slice normal).
    """

    folder: Path
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str | None
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]
    instance_files: tuple[Path, ...]
    # Added by the DICOM reader (optional, so older constructions keep working):
    modality: str = "CT"
    # ImagePositionPatient per instance (LPS mm), ordered like the z index.
    image_positions: tuple[tuple[float, float, float], ...] = ()
    # ImageOrientationPatient (row cosines, column cosines) shared by all instances.
    image_orientation: tuple[float, ...] = ()


@dataclass(frozen=True)
class CTVolume:
    """A loaded, checked CT image in HU with its provenance."""

    image: sitk.Image
    path: Path
    source_format: str  # "nifti" | "nrrd" | "mha" | "dicom" | "phantom" | "slicer"
    dicom: DicomSource | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. skipped series, ignored files

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.image.GetSpacing())  # type: ignore[return-value]

    def array(self) -> np.ndarray:
        """HU as a (z, y, x) view-free copy (float32)."""
        return sitk.GetArrayFromImage(self.image).astype(np.float32, copy=False)


def voxel_volume_ml(image: sitk.Image) -> float:
    """Volume of one voxel in millilitres (mm^3 / 1000)."""
    sx, sy, sz = image.GetSpacing()
    return float(sx * sy * sz) / 1000.0


def labelmap_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap a (z, y, x) uint8 label array in ``reference``'s geometry."""
    if array.shape != reference.GetSize()[::-1]:
        raise ValueError(
            f"label array shape {array.shape} does not match image size (z,y,x) "
            f"{reference.GetSize()[::-1]}"
        )
    out = sitk.GetImageFromArray(array.astype(np.uint8, copy=False))
    out.CopyInformation(reference)
    return out


def patient_left_axis(image: sitk.Image) -> tuple[int, float]:
    """Which array axis (0=z, 1=y, 2=x) points most towards the patient's left.

    LPS +x is the patient's left. Returns (numpy axis, sign) where sign is +1 if
    increasing index moves to the patient's left along that axis.
    """
    return patient_axes(image).numpy_axis_along(0)
