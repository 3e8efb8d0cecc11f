"""Export DICOM SEG: find the DICOM files a volume node came from and call the core's writer.

A DICOM SEG must reference the source CT instances. For a volume loaded through
Slicer's DICOM module the node keeps their SOP Instance UIDs in the attribute
``DICOM.instanceUIDs``, and the DICOM database knows each one's file. A volume
read from NIfTI/NRRD has no such source, and the user is told so. The SEG itself is written by
``seg_export_job`` in a background PythonSlicer, so Slicer's own pydicom is never asked to be 3.x.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from CovidCTAnalysisSlicer.process import environmentWithModulePath, findPythonSlicer
from CovidCTAnalysisSlicer.results import modelsFromSegmentationNode
from CovidCTAnalysisSlicer.seg_export_job import RESULT_PREFIX
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


@dataclass(frozen=True)
class SegExportResult:
    """What the background writer reported (the core's ``SegWriteResult.as_report()``)."""

    written: bool
    reason: str | None
    path: str | None


def exportDicomSeg(segmentationNode, volumeNode, instanceFiles: list[str], outputPath: str | Path,
                   models: list[dict[str, Any]] | None = None, pythonExecutable: str | None = None,
                   moduleDir: str | Path | None = None, environment: dict[str, str] | None = None,
                   timeout: float = 600.0) -> SegExportResult:
    """Write the segmentation as a DICOM SEG referencing ``instanceFiles``, in a background Python.

    The segments are mapped to the core's labels by name (as for a reference) on the volume's grid,
    so edits made in Segment Editor are exported too. Only the labelmap is made here; pydicom and
    highdicom are imported by ``seg_export_job`` in ``pythonExecutable`` (PythonSlicer), never in
    Slicer's own process. Raises ``RuntimeError`` with the writer's message when it fails.
    """
    labelmap = referenceLabelmapFromSegmentationNode(segmentationNode, volumeNode)
    if models is None:
        models = modelsFromSegmentationNode(segmentationNode)
    moduleDir = Path(moduleDir) if moduleDir is not None else Path(__file__).resolve().parents[1]
    workDir = Path(tempfile.mkdtemp(prefix="CovidCTAnalysis-seg-"))
    try:
        sitk.WriteImage(labelmap, str(workDir / "labelmap.nrrd"), True)
        (workDir / "instances.txt").write_text("\n".join(str(f) for f in instanceFiles), encoding="utf-8")
        (workDir / "models.json").write_text(json.dumps(models), encoding="utf-8")
        command = [pythonExecutable or findPythonSlicer(), "-m", "CovidCTAnalysisSlicer.seg_export_job",
                   "--labelmap", str(workDir / "labelmap.nrrd"), "--instances", str(workDir / "instances.txt"),
                   "--models", str(workDir / "models.json"), "--output", str(outputPath)]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=str(workDir),
                                   env=environmentWithModulePath(moduleDir, environment))
    finally:
        shutil.rmtree(workDir, ignore_errors=True)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            report = json.loads(line[len(RESULT_PREFIX):])
            return SegExportResult(written=report["written"], reason=report["reason"], path=report["path"])
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    raise RuntimeError(errors[-1] if errors else
                       f"the DICOM SEG writer exited with status {completed.returncode}: " + "\n".join(lines[-8:]))
