"""Export DICOM SEG from the scene: source files via the DICOM database, the core's writer, a readable SEG.

``slicer.dicomDatabase`` (a ctkDICOMDatabase, Qt) is not in the slicer-core wheel; a small stand-in
answers the two calls the glue makes. Everything else is the real MRML and the real core writer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_required import requireSlicer  # noqa: E402

slicer = requireSlicer()  # skips locally, fails under CI=true

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CovidCTAnalysis"))

from CovidCTAnalysisSlicer import dicom_export, segmentations, volumes  # noqa: E402


class StandInDicomDatabase:
    """Answers ``isOpen`` and ``fileForInstance(uid)`` like ctkDICOMDatabase."""

    def __init__(self, files_by_uid: dict[str, str]) -> None:
        self.isOpen = True
        self._files = files_by_uid

    def fileForInstance(self, uid: str) -> str:
        return self._files.get(uid, "")


from slicer_scene import newScene  # noqa: E402


@pytest.fixture(scope="module")
def dicomPhantom(tmp_path_factory):
    from CovidCTAnalysisLib.loading.dicom_series import load_dicom_series
    from CovidCTAnalysisLib.phantom.generator import make_phantom
    from CovidCTAnalysisLib.phantom.write_dicom import write_dicom_series

    phantom = make_phantom("covid", 5, size=(96, 96, 32))
    folder = tmp_path_factory.mktemp("dicom")
    written = write_dicom_series(phantom.image, folder)
    loaded = load_dicom_series(folder)
    return phantom, written, loaded


def test_export_dicom_seg_from_segmentation_node(dicomPhantom, tmp_path):
    import pydicom

    phantom, written, loaded = dicomPhantom
    scene = newScene()
    # As Slicer's DICOM plugin loads it: the volume plus the instance UIDs in the node attribute.
    volumeNode = volumes.addVolumeNodeFromSitkImage(scene, loaded.image, "CT from DICOM")
    volumeNode.SetAttribute(dicom_export.INSTANCE_UIDS_ATTRIBUTE, " ".join(written.sop_instance_uids))
    database = StandInDicomDatabase(dict(zip(written.sop_instance_uids, map(str, written.files), strict=True)))
    segNode = segmentations.segmentationNodeFromLabelmap(scene, phantom.truth, "CT from DICOM segmentation",
                                                         volumeNode)

    files = dicom_export.dicomInstanceFilesForVolume(volumeNode, database)
    assert sorted(files) == sorted(map(str, written.files))
    models = [{"id": "covidct-segmenter-demo", "version": "0.1.0", "demo": True}]
    result = dicom_export.exportDicomSeg(segNode, volumeNode, files, tmp_path / "seg.dcm", models=models,
                                         pythonExecutable=sys.executable)
    assert result.written, result.reason
    assert result.path == str(tmp_path / "seg.dcm")
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.Modality == "SEG"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Left lung", "Right lung", "Lesion"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == written.series_instance_uid
    # The frames hold exactly the truth's voxels per segment.
    frames = seg.pixel_array.reshape(-1, *seg.pixel_array.shape[-2:])
    perSegment = {}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        perSegment[number] = perSegment.get(number, 0) + int(np.count_nonzero(frame))
    truth = sitk.GetArrayFromImage(phantom.truth)
    assert perSegment == {n: int(np.count_nonzero(truth == n)) for n in (1, 2, 3)}


def test_non_dicom_volume_is_told_it_needs_a_dicom_source():
    scene = newScene()
    volumeNode = volumes.addVolumeNodeFromSitkImage(scene, sitk.Image([4, 4, 4], sitk.sitkInt16), "from NIfTI")
    with pytest.raises(dicom_export.DicomSourceMissing, match="not loaded from DICOM.*DICOM SEG needs a DICOM source"):
        dicom_export.dicomInstanceFilesForVolume(volumeNode, StandInDicomDatabase({}))


def test_instances_missing_from_database_are_named():
    scene = newScene()
    volumeNode = volumes.addVolumeNodeFromSitkImage(scene, sitk.Image([4, 4, 4], sitk.sitkInt16), "gone")
    volumeNode.SetAttribute(dicom_export.INSTANCE_UIDS_ATTRIBUTE, "1.2.3 1.2.4")
    with pytest.raises(dicom_export.DicomSourceMissing, match="2 of 2 source instances"):
        dicom_export.dicomInstanceFilesForVolume(volumeNode, StandInDicomDatabase({}))


EXPORT_WITHOUT_HIGHDICOM = """
import sys
# As in Slicer 5.10's own process: no highdicom, and pydicom must not be touched by the export.
sys.modules["highdicom"] = None
sys.path.insert(0, {module!r})
sys.path.insert(0, {testing!r})
from pathlib import Path
import SimpleITK as sitk
import slicer
from CovidCTAnalysisSlicer import dicom_export, segmentations, volumes
from slicer_scene import newScene

files = Path({files!r}).read_text().split("\\n")
scene = newScene()
volumeNode = volumes.addVolumeNodeFromSitkImage(scene, sitk.ReadImage({image!r}), "CT")
segNode = segmentations.segmentationNodeFromLabelmap(scene, sitk.ReadImage({truth!r}), "CT seg", volumeNode)
result = dicom_export.exportDicomSeg(segNode, volumeNode, files, {out!r}, models=[], pythonExecutable=sys.executable)
assert result.written, result.reason
assert "pydicom" not in sys.modules and "highdicom" not in [n for n in sys.modules if sys.modules[n] is not None]
print("EXPORTED")
"""


def test_export_runs_in_the_background_without_highdicom_in_the_calling_process(dicomPhantom, tmp_path):
    """The calling process (Slicer's) cannot import highdicom and never imports pydicom; the SEG is still written."""
    import subprocess

    import pydicom

    phantom, written, loaded = dicomPhantom
    sitk.WriteImage(loaded.image, str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(phantom.truth, str(tmp_path / "truth.nrrd"))
    (tmp_path / "files.txt").write_text("\n".join(map(str, written.files)))
    code = EXPORT_WITHOUT_HIGHDICOM.format(module=str(REPO / "CovidCTAnalysis"), testing=str(REPO / "Testing"),
                                           files=str(tmp_path / "files.txt"), image=str(tmp_path / "ct.nrrd"),
                                           truth=str(tmp_path / "truth.nrrd"), out=str(tmp_path / "seg.dcm"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "EXPORTED" in result.stdout, result.stderr[-3000:]
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == written.series_instance_uid


def test_export_reports_the_writer_error(dicomPhantom, tmp_path):
    """A failing background writer comes back as one RuntimeError with the core's own message."""
    phantom, written, loaded = dicomPhantom
    scene = newScene()
    volumeNode = volumes.addVolumeNodeFromSitkImage(scene, loaded.image, "CT")
    segNode = segmentations.segmentationNodeFromLabelmap(scene, phantom.truth, "CT seg", volumeNode)
    missing = [str(tmp_path / "gone.dcm")]
    with pytest.raises(RuntimeError) as raised:
        dicom_export.exportDicomSeg(segNode, volumeNode, missing, tmp_path / "seg.dcm", models=[],
                                    pythonExecutable=sys.executable)
    assert "not DICOM images" in str(raised.value)  # the core's own message, not a traceback
    assert not (tmp_path / "seg.dcm").exists()
