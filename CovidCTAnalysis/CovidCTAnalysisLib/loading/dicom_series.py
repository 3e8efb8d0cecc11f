"""DICOM folder -> ``CTVolume``: choose the series, order and check the slices, decode HU.

``load_dicom_series(folder, series_uid=None)``:

* **Series choice.** With ``series_uid``, that series (it must be CT). Without,
  the largest axial CT series that is not a localizer (scout); the notes say
  which was chosen and which were skipped and why.
* **Order and geometry.** Slices are sorted by ImagePositionPatient along the
  slice normal (``dicom_checks.order_slices``), never by file name or
  InstanceNumber; origin, direction and spacing come straight from the headers.
  Missing slices, uneven spacing, gantry tilt and mixed geometry are refused.
* **Pixels.** SimpleITK/GDCM decodes the sorted file list, including compressed
  transfer syntaxes (JPEG Lossless, JPEG 2000, RLE); RescaleSlope/Intercept
  give HU.
* **Privacy.** Notes and messages never contain patient identifiers or the
  names of instance files.

Non-image files beside the slices (notes, thumbnails, a DICOMDIR) are ignored
and the notes say so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.loading.checks import check_voxel_count
from CovidCTAnalysisLib.loading.dicom_checks import SliceGeometry, order_slices
from CovidCTAnalysisLib.loading.dicom_scan import (
    InstanceHeader,
    ScanResult,
    SeriesGroup,
    format_uid,
    scan_files,
    scan_folder,
    series_key,
)
from CovidCTAnalysisLib.loading.volume import CTVolume, DicomSource

log = logging.getLogger(__name__)


def load_dicom_series(folder: Path, series_uid: str | None = None) -> CTVolume:
    """Load one CT series from a DICOM folder as a ``CTVolume`` in HU (LPS geometry).

    Raises ``InputError`` (with what was found and what was expected) for an
    empty folder, a folder without DICOM images, no CT series, an unknown
    ``series_uid``, or a series that is not a regular volume.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"DICOM folder {folder} does not exist or is not a folder; expected a folder of "
                         "DICOM files (one per slice).")
    scan = scan_folder(folder)
    if scan.n_files == 0:
        raise InputError(f"DICOM folder {folder} is empty; expected DICOM files of a CT series (one per slice).")
    if not scan.series:
        detail = "; ".join(scan.ignored)
        raise InputError(f"{folder} holds no DICOM images ({scan.n_files} file(s): {detail}); expected DICOM "
                         "files of a CT series.")
    chosen, notes = choose_series(scan, series_uid)
    what = chosen.describe()
    instances, n_copies = _drop_copies(chosen.instances)
    geometry = order_slices(instances, what)
    check_voxel_count(geometry.size, what)  # before any pixel is decoded
    image = _read_pixels(geometry, what)
    source = _source_from_geometry(folder, geometry)
    notes = [*notes, *scan.ignored]
    if n_copies:
        notes.append(f"ignored {n_copies} duplicate file(s): copies of instances already read (same SOPInstanceUID)")
    sx, sy, sz = geometry.spacing
    notes.append(f"grid {geometry.size[0]}x{geometry.size[1]}x{geometry.size[2]} voxels, spacing "
                 f"{sx:.3f} x {sy:.3f} x {sz:.3f} mm, slices sorted by position along the slice normal")
    for line in notes:
        log.info("DICOM: %s", line)
    return CTVolume(image=image, path=folder, source_format="dicom", dicom=source, notes=tuple(notes))


def choose_series(scan: ScanResult, series_uid: str | None) -> tuple[SeriesGroup, list[str]]:
    """Pick the series to load and say why the others were skipped."""
    groups = scan.series
    if series_uid is not None:
        wanted = series_uid.strip()
        matches = [g for g in groups if g.series_instance_uid == wanted]
        if not matches:
            listing = "; ".join(g.describe() for g in groups)
            raise InputError(f"--series-uid {format_uid(wanted)} is not in this folder; it holds: {listing}.")
        chosen = max(matches, key=lambda g: (not g.is_localizer, len(g.instances)))  # the main stack
        if chosen.modality != "CT":
            raise InputError(f"--series-uid names {chosen.describe()}, whose Modality is "
                             f"'{chosen.modality or 'missing'}'; expected a CT series.")
        reason_chosen = "named by --series-uid"
    else:
        ct = [g for g in groups if g.modality == "CT"]
        if not ct:
            listing = "; ".join(g.describe() for g in groups)
            raise InputError(f"no CT series in this folder (found: {listing}); expected Modality CT. "
                             "This tool analyses chest CT only.")
        volumes = [g for g in ct if not g.is_localizer and len(g.instances) > 1]
        axial = [g for g in volumes if g.is_axial]
        pool = axial or volumes or ct
        # Largest first; SeriesNumber then key only to make ties deterministic.
        chosen = max(pool, key=lambda g: (len(g.instances), -(g.first.series_number or 0), g.key))
        reason_chosen = "the largest axial CT series" if chosen in axial else "the largest CT series (none is axial)"
    notes = [f"chosen: {chosen.describe()}: {reason_chosen}"]
    for g in groups:
        if g is chosen:
            continue
        if g.modality != "CT":
            why = f"Modality {g.modality or 'missing'}, not CT"
        elif series_uid is not None and g.series_instance_uid != chosen.series_instance_uid:
            why = "not the series named by --series-uid"
        elif g.is_localizer:
            why = "localizer (scout) image"
        elif len(g.instances) <= 1:
            why = "a single image, not a volume"
        elif not g.is_axial and chosen.is_axial:
            why = "not axial"
        else:
            why = "fewer images than the chosen series"
        notes.append(f"skipped: {g.describe()}: {why}")
    return chosen, notes


def dicom_source_from_files(files: Sequence[Path]) -> DicomSource:
    """The ``DicomSource`` of a volume given its instance files (e.g. from Slicer's DICOM database).

    The files must be the image instances of one series; they are ordered by
    position along the slice normal, as ``load_dicom_series`` orders z.
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise InputError("no DICOM files given; expected the instance files of the loaded series.")
    headers, rejected = scan_files(paths)
    if rejected:
        raise InputError(f"{len(rejected)} of {len(paths)} file(s) are not DICOM images "
                         f"({rejected[0][1]}); expected the instance files of one series.")
    keys = {series_key(h) for h in headers}
    if len(keys) > 1:
        raise InputError(f"the files belong to {len(keys)} different series or image planes; expected one "
                         "series of parallel slices.")
    group = SeriesGroup(next(iter(keys)), list(headers))
    geometry = order_slices(group.instances, group.describe())
    return _source_from_geometry(Path(paths[0]).parent, geometry)


def _drop_copies(instances: list[InstanceHeader]) -> tuple[list[InstanceHeader], int]:
    """Keep one file per SOPInstanceUID (a folder may hold the same instance twice, e.g. a copied
    subfolder). Blank UIDs are never merged: they say nothing about identity."""
    seen: set[str] = set()
    kept: list[InstanceHeader] = []
    for inst in instances:
        uid = inst.sop_instance_uid
        if uid and uid in seen:
            continue
        seen.add(uid)
        kept.append(inst)
    return kept, len(instances) - len(kept)


def _source_from_geometry(folder: Path, geometry: SliceGeometry) -> DicomSource:
    first: InstanceHeader = geometry.instances[0]
    return DicomSource(
        folder=folder,
        series_instance_uid=first.series_instance_uid,
        study_instance_uid=first.study_instance_uid,
        frame_of_reference_uid=first.frame_of_reference_uid or None,
        sop_class_uid=first.sop_class_uid,
        sop_instance_uids=tuple(i.sop_instance_uid for i in geometry.instances),
        instance_files=tuple(i.path for i in geometry.instances),
        modality=first.modality,
        image_positions=tuple(i.position for i in geometry.instances),  # type: ignore[misc]
        image_orientation=tuple(first.orientation or ()),
    )


def _read_pixels(geometry: SliceGeometry, what: str) -> sitk.Image:
    """Decode the sorted files with SimpleITK/GDCM and stamp the header geometry on the result."""
    files = [str(i.path) for i in geometry.instances]
    rescales = {i.rescale for i in geometry.instances}
    uniform = len(rescales) == 1
    warnings_were_on = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM warnings name files (which may carry patient IDs)
    try:
        if uniform:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            # ImageSeriesReader takes the pixel type from the first file; per-slice rescale
            # values need each slice decoded on its own, in float.
            slices = [sitk.GetArrayFromImage(sitk.Cast(sitk.ReadImage(f), sitk.sitkFloat32))[0] for f in files]
            image = sitk.GetImageFromArray(np.stack(slices))
    except RuntimeError as exc:
        raise InputError(f"{what}: the pixel data cannot be decoded ({str(exc).splitlines()[-1][:200]}); "
                         "expected a standard (possibly compressed) transfer syntax.") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_were_on)
    if image.GetSize() != geometry.size:
        raise InputError(f"{what}: decoded size {image.GetSize()} differs from the headers' {geometry.size}; "
                         "the pixel data is damaged.")
    slope, intercept = next(iter(rescales))
    integral = uniform and float(slope).is_integer() and float(intercept).is_integer()
    image = sitk.Cast(image, sitk.sitkInt16 if integral else sitk.sitkFloat32)
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    return image
