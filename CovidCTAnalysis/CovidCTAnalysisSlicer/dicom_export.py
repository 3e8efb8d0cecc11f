"""Export DICOM SEG: find the DICOM files a volume node came from and call the core's writer.

A DICOM SEG must reference the source CT instances. For a volume loaded through
Slicer's DICOM module the node keeps their SOP Instance UIDs in the attribute
``DICOM.instanceUIDs``, and the DICOM database knows each one's file. A volume
read from NIfTI/NRRD has no such source, and the user is told so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from CovidCTAnalysisSlicer.results import modelsFromSegmentationNode
from CovidCTAnalysisSlicer.segmentations import referenceLabelmapFromSegmentationNode

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"


class DicomSourceMissing(ValueError):
    """The volume has no DICOM source series a DICOM SEG could reference."""


def dicomInstanceFilesForVolume(volumeNode, dicomDatabase) -> list[str]:
    """The files of the DICOM instances ``volumeNode`` was loaded from, via ``slicer.dicomDatabase``.

    Raises ``DicomSourceMissing`` for a volume not loaded from DICOM, or whose files
    are no longer in the database.
    """
    uids = (volumeNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        raise DicomSourceMissing(
            f"volume '{volumeNode.GetName()}' was not loaded from DICOM (it has no {INSTANCE_UIDS_ATTRIBUTE}); "
            "a DICOM SEG needs a DICOM source series. Load the CT through the DICOM module, or save the "
            "segmentation as .seg.nrrd instead."
        )
    if dicomDatabase is None or not dicomDatabase.isOpen:
        raise DicomSourceMissing("the DICOM database is not open; open it in the DICOM module and try again")
    files, missing = [], []
    for uid in uids:
        path = dicomDatabase.fileForInstance(uid)
        (files if path and Path(path).is_file() else missing).append(path or uid)
    if missing:
        raise DicomSourceMissing(
            f"{len(missing)} of {len(uids)} source instances of '{volumeNode.GetName()}' are not in the DICOM "
            f"database (e.g. {missing[0]}); re-import the series and try again"
        )
    return files


def exportDicomSeg(segmentationNode, volumeNode, instanceFiles: list[str], outputPath: str | Path,
                   models: list[dict[str, Any]] | None = None):
    """Write the segmentation as a DICOM SEG referencing ``instanceFiles``; returns the core's SegWriteResult.

    The segments are mapped to the core's labels by name (as for a reference) on
    the volume's grid, so edits made in Segment Editor are exported too.
    """
    from CovidCTAnalysisLib.loading.dicom_series import dicom_source_from_files
    from CovidCTAnalysisLib.results.dicom_seg import write_dicom_seg

    labelmap = referenceLabelmapFromSegmentationNode(segmentationNode, volumeNode)
    source = dicom_source_from_files([Path(f) for f in instanceFiles])
    if models is None:
        models = modelsFromSegmentationNode(segmentationNode)
    return write_dicom_seg(labelmap, source, output_path=Path(outputPath), models=models)
