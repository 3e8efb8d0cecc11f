"""MRML glue tested against the real Slicer MRML libraries (the ``slicer-core`` wheel), not a fake ``slicer``.

Covers: volume node -> core input (RAS/LPS for oblique directions, against Slicer's
own NRRD writer); core ``.seg.nrrd`` -> segmentation node (names, colours,
terminology, voxel counts); report statistics -> table node; reference
segmentation node -> labelmap -> Dice.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from slicer_required import requireSlicer  # noqa: E402

slicer = requireSlicer()  # skips locally, fails under CI=true

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CovidCTAnalysis"))

from CovidCTAnalysisLib import constants  # noqa: E402
from CovidCTAnalysisLib.results.outputs import write_seg_nrrd  # noqa: E402
from CovidCTAnalysisLib.results.statistics import compare_to_reference  # noqa: E402
from CovidCTAnalysisSlicer import results, segmentations, tables, volumes  # noqa: E402
from slicer_scene import newScene  # noqa: E402


@pytest.fixture()
def scene():
    return newScene()


def rotationMatrix(axis: str, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def obliqueImage(size=(12, 10, 7), spacing=(0.8, 1.3, 2.5), origin=(-40.0, 25.0, 110.0)) -> sitk.Image:
    """An LPS image with a non-identity, non-axis-aligned direction and a unique value per voxel."""
    direction = rotationMatrix("z", 25) @ rotationMatrix("x", -12) @ np.diag([1, -1, -1])
    array = np.arange(np.prod(size), dtype=np.int16).reshape(size[::-1]) - 1000
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction.flatten().tolist())
    return image


def ballLabelmap(reference: sitk.Image) -> sitk.Image:
    """Labels 1/2/3 as blocks (left, right) and a ball (lesion inside the left block)."""
    z, y, x = np.indices(reference.GetSize()[::-1])
    labels = np.zeros(z.shape, np.uint8)
    labels[1:-1, 2:-2, 1:5] = constants.LEFT_LUNG
    labels[1:-1, 2:-2, 6:-1] = constants.RIGHT_LUNG
    labels[(z - 3) ** 2 + (y - 5) ** 2 + (x - 3) ** 2 <= 2] = constants.LESION
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(reference)
    return out


# --- volumes -------------------------------------------------------------------------------


def test_volume_node_geometry_is_lps_for_oblique_direction(scene):
    image = obliqueImage()
    node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    # Set the node the way Slicer does (IJK->RAS), computed independently here from the LPS definition.
    d = np.array(image.GetDirection()).reshape(3, 3)
    ijkToLps = np.eye(4)
    ijkToLps[:3, :3] = d @ np.diag(image.GetSpacing())
    ijkToLps[:3, 3] = image.GetOrigin()
    ijkToRas = np.diag([-1, -1, 1, 1]) @ ijkToLps
    volumes.updateVolumeNodeFromSitkImage(node, image)
    nodeMatrix = volumes.matrixToNumpy(_ijkToRas(node))
    np.testing.assert_allclose(nodeMatrix, ijkToRas, atol=1e-9)

    core = volumes.sitkImageFromVolumeNode(node)
    np.testing.assert_allclose(core.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(core.GetSpacing(), image.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(core.GetDirection(), image.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(core), sitk.GetArrayFromImage(image))
    # A voxel's RAS position in Slicer equals its LPS position in the core, flipped.
    for ijk in [(0, 0, 0), (11, 9, 6), (3, 7, 2)]:
        ras = nodeMatrix @ np.array([*ijk, 1.0])
        lps = np.array(core.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-9)
        assert core[ijk] == image[ijk]


def _ijkToRas(node):
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return m


def test_volume_node_matches_slicer_nrrd_writer(scene, tmp_path):
    """Independent check: Slicer's own storage node writes the volume; SimpleITK reads it back."""
    node = volumes.addVolumeNodeFromSitkImage(scene, obliqueImage(), "oblique")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "slicer.nrrd"))
    assert storage.WriteData(node)
    bySlicer = sitk.ReadImage(str(tmp_path / "slicer.nrrd"))
    ours = volumes.sitkImageFromVolumeNode(node)
    np.testing.assert_allclose(ours.GetOrigin(), bySlicer.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(ours.GetSpacing(), bySlicer.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(ours.GetDirection(), bySlicer.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(bySlicer))
    # And the file the subprocess reads is the same image.
    written = sitk.ReadImage(str(volumes.writeVolumeNodeForCore(node, tmp_path / "core.nrrd")))
    np.testing.assert_allclose(written.GetDirection(), bySlicer.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(bySlicer))


def test_parent_transform_is_hardened_and_nonlinear_refused(scene):
    import vtk

    node = volumes.addVolumeNodeFromSitkImage(scene, obliqueImage(), "moved")
    transformNode = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transformNode)
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 10.0)  # 10 mm along RAS +x (towards the patient's right)
    transformNode.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transformNode.GetID())
    moved = volumes.sitkImageFromVolumeNode(node)
    plain = volumes.sitkImageFromVolumeNode(node, hardenTransform=False)
    # +10 mm in RAS x is -10 mm in LPS x.
    np.testing.assert_allclose(np.subtract(moved.GetOrigin(), plain.GetOrigin()), [-10.0, 0.0, 0.0], atol=1e-9)

    gridNode = slicer.vtkMRMLGridTransformNode()
    scene.AddNode(gridNode)
    node.SetAndObserveTransformNodeID(gridNode.GetID())
    with pytest.raises(ValueError, match="non-linear transform"):
        volumes.sitkImageFromVolumeNode(node)


def test_empty_volume_node_is_refused_with_its_name(scene):
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName("nothing loaded")
    scene.AddNode(node)
    with pytest.raises(ValueError, match="nothing loaded"):
        volumes.sitkImageFromVolumeNode(node)


# --- segmentations ------------------------------------------------------------------------------


def test_seg_nrrd_becomes_segmentation_node_with_counts_names_colours(scene, tmp_path):
    image = obliqueImage()
    labelmap = ballLabelmap(image)
    path = write_seg_nrrd(labelmap, tmp_path / "segmentation.seg.nrrd")
    volumeNode = volumes.addVolumeNodeFromSitkImage(scene, image, "CT")
    segNode = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(segNode)
    segmentations.loadSegNrrdIntoSegmentationNode(path, segNode, volumeNode)

    assert segmentations.segmentNames(segNode) == ["Left lung", "Right lung", "Lesion"]
    array = sitk.GetArrayFromImage(labelmap)
    for label, name in constants.LABEL_NAMES.items():
        segmentId = segmentations.segmentIdByName(segNode, name)
        assert segmentations.segmentVoxelCount(segNode, segmentId) == int(np.count_nonzero(array == label)) > 0
        segment = segNode.GetSegmentation().GetSegment(segmentId)
        expected = [c / 255 for c in constants.TERMINOLOGY[label].color_rgb]
        np.testing.assert_allclose(segment.GetColor(), expected, atol=1e-3)
        assert f"^{constants.TERMINOLOGY[label].type[0]}^" in segmentations.segmentTerminology(segNode, segmentId)
    # The segmentation follows the volume's grid: exporting it back gives the labelmap exactly.
    back = segmentations.referenceLabelmapFromSegmentationNode(segNode, volumeNode)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)


def test_seg_nrrd_without_expected_segments_leaves_node_untouched(scene, tmp_path):
    import slicerio

    seg = slicerio.create_segmentation((4, 4, 4), np.eye(4))
    slicerio.add_segment(seg, np.ones((4, 4, 4), bool), {"id": "x", "name": "Liver"})
    slicerio.write_segmentation(str(tmp_path / "other.seg.nrrd"), seg)
    segNode = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(segNode)
    with pytest.raises(ValueError, match=r"Liver.*expected"):
        segmentations.loadSegNrrdIntoSegmentationNode(tmp_path / "other.seg.nrrd", segNode)
    assert segNode.GetSegmentation().GetNumberOfSegments() == 0


# --- reference segmentation -> Dice ----------------------------------------------------------------


def test_reference_segmentation_node_to_labelmap_gives_dice(scene):
    image = obliqueImage()
    truth = ballLabelmap(image)
    volumeNode = volumes.addVolumeNodeFromSitkImage(scene, image, "CT")
    refNode = segmentations.segmentationNodeFromLabelmap(scene, truth, "reference", volumeNode)
    # A dataset's own segment names are matched too.
    refNode.GetSegmentation().GetNthSegment(2).SetName("Infection")
    reference = segmentations.referenceLabelmapFromSegmentationNode(refNode, volumeNode)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reference), sitk.GetArrayFromImage(truth))
    perfect = compare_to_reference(truth, reference)
    assert all(perfect["dice"][name] == pytest.approx(1.0) for name in constants.LABEL_NAMES.values())

    # Drop half of the right lung from our labelmap: Dice = 2|A∩B| / (|A|+|B|) = 2h / (h + 2h) = 2/3.
    array = sitk.GetArrayFromImage(truth)
    rightZ = np.nonzero(array == constants.RIGHT_LUNG)[0]
    cut = array.copy()
    keepZ = np.unique(rightZ)[: len(np.unique(rightZ)) // 2]
    nRight = np.count_nonzero(array == constants.RIGHT_LUNG)
    mask = (array == constants.RIGHT_LUNG) & ~np.isin(np.indices(array.shape)[0], keepZ)
    cut[mask] = 0
    kept = np.count_nonzero(cut == constants.RIGHT_LUNG)
    ours = sitk.GetImageFromArray(cut)
    ours.CopyInformation(truth)
    partial = compare_to_reference(ours, reference)
    assert partial["dice"]["Right lung"] == pytest.approx(2 * kept / (kept + nRight))
    assert partial["dice"]["Left lung"] == pytest.approx(1.0)


def test_reference_without_known_segment_names_is_refused(scene):
    image = obliqueImage()
    volumeNode = volumes.addVolumeNodeFromSitkImage(scene, image, "CT")
    refNode = segmentations.segmentationNodeFromLabelmap(scene, ballLabelmap(image), "ref", volumeNode)
    for index in range(3):
        segment = refNode.GetSegmentation().GetNthSegment(index)
        segment.SetName(f"Segment_{index}")
        segment.SetTag("TerminologyEntry", "")
    with pytest.raises(ValueError, match=r"Segment_0.*expected names"):
        segmentations.referenceLabelmapFromSegmentationNode(refNode, volumeNode)


def test_reference_segments_are_matched_by_terminology_code_when_names_say_nothing(scene):
    image = obliqueImage()
    truth = ballLabelmap(image)
    volumeNode = volumes.addVolumeNodeFromSitkImage(scene, image, "CT")
    refNode = segmentations.segmentationNodeFromLabelmap(scene, truth, "ref", volumeNode)
    def code(c):  # constants keep (code value, scheme, meaning); Slicer writes scheme^code^meaning
        return f"{c[1]}^{c[0]}^{c[2]}"

    for index in range(3):  # names say nothing; the terminology (as Slicer stores it) says what each is
        term = constants.TERMINOLOGY[index + 1]
        segment = refNode.GetSegmentation().GetNthSegment(index)
        segment.SetName(f"Segment_{index}")
        segment.SetTag("TerminologyEntry", f"ctx~{code(term.category)}~{code(term.type)}~^^~ctx2~^^~^^")
    reference = segmentations.referenceLabelmapFromSegmentationNode(refNode, volumeNode)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reference), sitk.GetArrayFromImage(truth))
    assert segmentations.terminologyTypeCode(segmentations.segmentTerminology(refNode, refNode.GetSegmentation()
                                                                               .GetNthSegmentID(0))) == \
        constants.TERMINOLOGY[1].type[0]
    assert segmentations.terminologyTypeCode("") == "" and segmentations.terminologyTypeCode("a~b") == ""


# --- statistics -> table node -----------------------------------------------------------------------

REPORT = {
    "classification": {"ran": True, "label": "COVID-19",
                       "probabilities": {"Normal": 0.05, "Pneumonia": 0.15, "COVID-19": 0.80}},
    "segmentation": {"ran": True, "reason": "class is COVID-19"},
    "segments": [
        {"name": "Lesion", "label": 3, "volume_ml": 120.5, "mean_hu": -520.0, "sd_hu": 80.0},
        {"name": "Left lung", "label": 1, "volume_ml": 1800.25, "mean_hu": -850.5, "sd_hu": 60.0},
        {"name": "Right lung", "label": 2, "volume_ml": 2100.0, "mean_hu": -845.0, "sd_hu": 55.5},
    ],
    "statistics": {"lesion_percent": {"left": 4.5, "right": 1.25, "total": 3.0}},
    "dice": {"Left lung": 0.97, "Right lung": 0.96, "Lesion": None},
    "hd95_mm": {"Left lung": 2.5, "Right lung": 3.0, "Lesion": None},
    "models": [{"id": "covidct-classifier-demo", "version": "0.1.0", "task": "classification",
                "sha256": "ab" * 32, "demo": True, "trained_on": "synthetic phantoms"}],
    "intended_use": "Research use, not for diagnosis.",
}


def test_statistics_table_holds_report_values(scene):
    tableNode = slicer.vtkMRMLTableNode()
    scene.AddNode(tableNode)
    tables.updateTableNodeFromReport(tableNode, REPORT)
    rows = tables.rowsFromTableNode(tableNode)
    assert [r["Segment"] for r in rows] == ["Left lung", "Right lung", "Lesion"]
    left, right, lesion = rows
    assert left["Volume"] == pytest.approx(1800.25) and left["Mean HU"] == pytest.approx(-850.5)
    assert right["SD HU"] == pytest.approx(55.5)
    assert (left["Lesion %"], right["Lesion %"], lesion["Lesion %"]) == pytest.approx((4.5, 1.25, 3.0))
    assert left["Dice"] == pytest.approx(0.97) and right["HD95"] == pytest.approx(3.0)
    assert math.isnan(lesion["Dice"])  # None in the report: no lesion in the reference
    assert tableNode.GetColumnUnitLabel("Volume") == "mL"
    assert tableNode.GetTable().GetNumberOfRows() == 3

    # Re-filling replaces: no reference this time, so no Dice/HD95 columns and still three rows.
    noRef = {k: v for k, v in REPORT.items() if k not in ("dice", "hd95_mm")}
    tables.updateTableNodeFromReport(tableNode, noRef)
    rows = tables.rowsFromTableNode(tableNode)
    assert len(rows) == 3 and "Dice" not in rows[0]


def test_self_test_helpers_compare_table_with_report(scene):
    from CovidCTAnalysisSlicer import selftest

    tableNode = slicer.vtkMRMLTableNode()
    scene.AddNode(tableNode)
    tables.updateTableNodeFromReport(tableNode, REPORT)
    assert selftest.tableMismatches(tableNode, REPORT) == []
    assert selftest.tableValue(tableNode, "Right lung", "Volume") == pytest.approx(2100.0)
    changed = dict(REPORT, segments=[dict(s, volume_ml=s["volume_ml"] + 1) for s in REPORT["segments"]])
    problems = selftest.tableMismatches(tableNode, changed)
    assert len(problems) == 3 and all("Volume" in p for p in problems)


def test_summary_lines_carry_class_provenance_and_research_note():
    assert results.classificationText(REPORT) == "COVID-19  (Normal 5.0 %, Pneumonia 15.0 %, COVID-19 80.0 %)"
    line = results.provenanceLine(REPORT)
    assert "covidct-classifier-demo v0.1.0" in line and "abababababab" in line and "DEMO" in line
    assert "not for diagnosis" in results.researchNote(REPORT)
    flagged = dict(REPORT, warnings=["only 18 mL of lung found (left 15 mL, right 3 mL)"])
    assert results.researchNote(flagged).endswith("Warning: only 18 mL of lung found (left 15 mL, right 3 mL).")
    assert results.classProbabilities(REPORT) == {"Normal": 0.05, "Pneumonia": 0.15, "COVID-19": 0.80}


def test_apply_outputs_replaces_results_instead_of_duplicating(scene, tmp_path):
    import json

    image = obliqueImage()
    volumeNode = volumes.addVolumeNodeFromSitkImage(scene, image, "CT")
    labelmap = ballLabelmap(image)
    write_seg_nrrd(labelmap, tmp_path / "segmentation.seg.nrrd")
    (tmp_path / "report.json").write_text(json.dumps(REPORT))
    first = results.applyAnalysisOutputs(scene, volumeNode, tmp_path)
    assert first.segmentationNode.GetName() == "CT segmentation"
    # It references the volume's geometry, as Slicer's Segment Editor expects.
    assert first.segmentationNode.GetNodeReference("referenceImageGeometryRef").GetID() == volumeNode.GetID()
    assert first.classLabel == "COVID-19"
    nSeg = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    nTable = scene.GetNumberOfNodesByClass("vtkMRMLTableNode")

    # Second run, smaller lesion: same nodes, new content.
    array = sitk.GetArrayFromImage(labelmap)
    array[array == constants.LESION] = constants.LEFT_LUNG
    array[3, 5, 3] = constants.LESION
    smaller = sitk.GetImageFromArray(array)
    smaller.CopyInformation(image)
    write_seg_nrrd(smaller, tmp_path / "segmentation.seg.nrrd")
    second = results.applyAnalysisOutputs(scene, volumeNode, tmp_path)
    assert second.segmentationNode is first.segmentationNode and second.tableNode is first.tableNode
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == nSeg
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == nTable
    lesionId = segmentations.segmentIdByName(second.segmentationNode, "Lesion")
    assert segmentations.segmentVoxelCount(second.segmentationNode, lesionId) == 1
    assert results.modelsFromSegmentationNode(second.segmentationNode)[0]["id"] == "covidct-classifier-demo"

    # A run that did not segment removes the stale segmentation and table.
    notSegmented = dict(REPORT, segmentation={"ran": False, "reason": "class is Normal"}, segments=[])
    (tmp_path / "report.json").write_text(json.dumps(notSegmented))
    third = results.applyAnalysisOutputs(scene, volumeNode, tmp_path)
    assert third.segmentationNode is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == nSeg - 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == nTable - 1


def test_apply_outputs_with_broken_segmentation_adds_no_nodes(scene, tmp_path):
    import json

    volumeNode = volumes.addVolumeNodeFromSitkImage(scene, obliqueImage(), "CT")
    (tmp_path / "report.json").write_text(json.dumps(REPORT))
    (tmp_path / "segmentation.seg.nrrd").write_bytes(b"NRRD0004\nbroken")
    before = scene.GetNumberOfNodes()
    with pytest.raises(Exception):  # noqa: B017 - slicerio raises its own error types for a corrupt header
        results.applyAnalysisOutputs(scene, volumeNode, tmp_path)
    assert scene.GetNumberOfNodes() == before
