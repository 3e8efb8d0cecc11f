"""Write a volume (e.g. a synthetic phantom) as a DICOM CT image series.

Used by the tests to build DICOM folders with known geometry and by users who
want to try the DICOM path (``covidct analyze folder/``, DICOM SEG export) on a
phantom. One file per slice, CT Image Storage, valid UIDs, exact
ImagePositionPatient/ImageOrientationPatient from the image's LPS geometry.

Example::

    from CovidCTAnalysisLib.phantom.write_dicom import write_dicom_series
    written = write_dicom_series(image, Path("/tmp/phantom_dicom"))

From the shell (any image SimpleITK reads, e.g. a phantom written by ``covidct phantom``)::

    python -m CovidCTAnalysisLib.phantom.write_dicom ct.nii.gz dicom_folder/ [--compress]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_rescale
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from CovidCTAnalysisLib import __version__

_SOP_CLASS_BY_MODALITY = {"CT": CTImageStorage, "MR": MRImageStorage}


@dataclass(frozen=True)
class WrittenSeries:
    """What was written: the files (ordered like the image's z index) and the UIDs."""

    files: tuple[Path, ...]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]


def write_dicom_series(
    image: sitk.Image,
    folder: Path,
    *,
    modality: str = "CT",
    series_description: str = "CovidCTAnalysis synthetic phantom",
    series_number: int = 1,
    study_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient_name: str = "Phantom^Synthetic",
    patient_id: str = "PHANTOM",
    file_name: str = "slice_{index:04d}.dcm",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    compress: bool = False,
) -> WrittenSeries:
    """Write ``image`` (HU, any LPS direction) as one DICOM instance per z slice.

    Pixel values are rounded to int16 (RescaleSlope 1, RescaleIntercept 0), so the
    HU read back equal ``round(image)``. ``compress=True`` writes RLE Lossless, a
    compressed transfer syntax that SimpleITK/GDCM and pydicom both decode.
    ``folder`` is created if needed; existing files with the same names are
    overwritten. Returns the files in z order and the UIDs used.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    modality = modality.upper()
    sop_class = _SOP_CLASS_BY_MODALITY.get(modality, CTImageStorage)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    array = sitk.GetArrayFromImage(image)
    hu = np.clip(np.rint(array.astype(np.float64)), -32768, 32767).astype(np.int16)
    n_z, rows, cols = hu.shape
    sx, sy, sz = (float(s) for s in image.GetSpacing())
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.array(image.GetOrigin(), dtype=float)
    # IOP: direction cosines of the row (index x) and column (index y) axes.
    iop = [*direction[:, 0], *direction[:, 1]]
    study_uid = study_instance_uid or generate_uid()
    series_uid = generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")

    files: list[Path] = []
    sop_uids: list[str] = []
    for k in range(n_z):
        sop_uid = generate_uid()
        ipp = origin + k * sz * direction[:, 2]
        ds = _slice_dataset(
            sop_class=sop_class, sop_uid=sop_uid, modality=modality, study_uid=study_uid,
            series_uid=series_uid, for_uid=for_uid, date=date, time=time,
            series_number=series_number, series_description=series_description,
            patient_name=patient_name, patient_id=patient_id, image_type=image_type,
        )
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds_str(v) for v in ipp]
        ds.ImageOrientationPatient = [_ds_str(v) for v in iop]
        ds.PixelSpacing = [_ds_str(sy), _ds_str(sx)]  # row spacing (y), column spacing (x)
        ds.SliceThickness = _ds_str(sz)
        ds.SliceLocation = _ds_str(float(np.dot(ipp, np.cross(direction[:, 0], direction[:, 1]))))
        ds.Rows, ds.Columns = rows, cols
        ds.PixelData = hu[k].tobytes()
        if compress:
            ds.compress(RLELossless, encoding_plugin="pydicom")
        path = folder / file_name.format(index=k, instance=k + 1)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        sop_uids.append(sop_uid)
    return WrittenSeries(tuple(files), study_uid, series_uid, for_uid, tuple(sop_uids))


def _ds_str(value: float) -> str:
    """A DS value (at most 16 characters, pydicom's ``format_number_as_ds``); float noise of a rotated
    direction matrix (|v| < 1e-9) is written as 0 rather than as 1.2246467991e-16."""
    v = float(value)
    return "0" if abs(v) < 1e-9 else format_number_as_ds(v)


def _slice_dataset(*, sop_class, sop_uid, modality, study_uid, series_uid, for_uid, date, time,
                   series_number, series_description, patient_name, patient_id, image_type) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"COVIDCT_{__version__}"[:16]
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(image_type)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = time
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "CovidCTAnalysis"
    ds.ManufacturerModelName = "synthetic phantom writer"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    if modality == "CT":
        ds.KVP = "120"
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
    else:  # MR Image module essentials, enough for a believable non-CT series
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = "10"
        ds.RepetitionTime = "500"
        ds.EchoTrainLength = "1"
        ds.MagneticFieldStrength = "1.5"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def read_back_hu(files: Sequence[Path]) -> np.ndarray:
    """HU of written files as (z, y, x), decoded with pydicom (for tests and checks)."""
    slices = []
    for f in files:
        ds = pydicom.dcmread(f)
        slices.append(apply_rescale(ds.pixel_array.astype(np.float64), ds))
    return np.stack(slices)


def main(argv: Sequence[str] | None = None) -> int:
    """Convert an image file (HU) into a DICOM CT series in a new or empty folder."""
    parser = argparse.ArgumentParser(prog="python -m CovidCTAnalysisLib.phantom.write_dicom",
                                     description="Write a CT image (NIfTI/NRRD/MHA, HU) as a DICOM CT series.")
    parser.add_argument("image", type=Path)
    parser.add_argument("folder", type=Path, help="output folder (new or empty)")
    parser.add_argument("--compress", action="store_true", help="RLE Lossless transfer syntax")
    parser.add_argument("--series-description", default="CovidCTAnalysis synthetic phantom")
    args = parser.parse_args(argv)
    if args.folder.exists() and (not args.folder.is_dir() or any(args.folder.iterdir())):
        print(f"error: {args.folder} exists and is not an empty folder; choose a new folder", file=sys.stderr)
        return 4
    try:
        image = sitk.ReadImage(str(args.image))
    except RuntimeError:
        print(f"error: cannot read {args.image} as an image; expected NIfTI, NRRD or MHA", file=sys.stderr)
        return 2
    written = write_dicom_series(image, args.folder, compress=args.compress,
                                 series_description=args.series_description)
    print(f"wrote {len(written.files)} slices to {args.folder} (SeriesInstanceUID {written.series_instance_uid})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
