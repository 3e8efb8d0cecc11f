"""DICOM SEG export, checked by independent readers.

* dciodvfy (dicom3tools) reports no IOD errors;
* dcmqi's segimage2itkimage (the reader behind Slicer's QuantitativeReporting)
  reads it, and each segment equals ours voxel for voxel on the source grid;
* highdicom reads it back with pydicom's validation mode RAISE and the masks
  round-trip, frame by frame, matched to the source instances.

On phantom series written as DICOM, and on the real series P001-repaired-uids.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import LABEL_NAMES, TERMINOLOGY
from CovidCTAnalysisLib.errors import DicomSegError
from CovidCTAnalysisLib.loading.dicom_series import load_dicom_series
from CovidCTAnalysisLib.loading.volume import CTVolume, labelmap_like
from CovidCTAnalysisLib.phantom.write_dicom import write_dicom_series
from CovidCTAnalysisLib.results.dicom_seg import (
    SegWriteResult,
    seg_reference_problem,
    seg_unavailable_reason,
    write_dicom_seg,
)
from dicom_validators import chest_volume, edit_series, on_grid, read_with_dcmqi, run_dciodvfy
from orientations import rotation

MODEL = {"id": "covidct-segmenter-test", "version": "1.2.3", "task": "segmentation", "demo": True}


@pytest.fixture
def strict_pydicom():
    """Read with pydicom's enforce-valid-values behaviour, as highdicom's own tests do."""
    before = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.reading_validation_mode = before


@pytest.fixture
def phantom_series(tmp_path):
    image, truth = chest_volume(seed=21)
    write_dicom_series(image, tmp_path / "ct")
    volume = load_dicom_series(tmp_path / "ct")
    labels = sitk.GetArrayFromImage(truth)
    assert set(np.unique(labels)) == {0, 1, 2, 3}  # every segment present
    return volume, labelmap_like(labels, volume.image)


def _check_with_all_readers(seg_path: Path, volume: CTVolume, labelmap: sitk.Image, tmp: Path,
                            expected_labels: list[int]) -> None:
    labels = sitk.GetArrayFromImage(labelmap)
    # 1. dciodvfy: no errors
    report = run_dciodvfy(seg_path)
    assert not report.errors, report.output
    # 2. dcmqi reads it; each segment equals ours on the source grid
    masks = read_with_dcmqi(seg_path, tmp / "dcmqi")
    assert sorted(masks) == sorted(LABEL_NAMES[v] for v in expected_labels)
    for value in expected_labels:
        np.testing.assert_array_equal(on_grid(masks[LABEL_NAMES[value]], volume.image), labels == value,
                                      err_msg=f"dcmqi mask of {LABEL_NAMES[value]}")
    # 3. highdicom reads it with validation RAISE; masks round-trip per source instance
    seg = hd.seg.segread(seg_path)
    numbers = list(range(1, len(expected_labels) + 1))
    assert [seg.get_segment_description(n).segment_label for n in numbers] == [LABEL_NAMES[v] for v in expected_labels]
    pixels = seg.get_pixels_by_source_instance(list(volume.dicom.sop_instance_uids), segment_numbers=numbers,
                                               assert_missing_frames_are_empty=True)
    for n, value in zip(numbers, expected_labels, strict=True):
        np.testing.assert_array_equal(pixels[..., n - 1] > 0, labels == value)


def test_phantom_seg_valid_for_all_readers(phantom_series, tmp_path, strict_pydicom):
    volume, labelmap = phantom_series
    result = write_dicom_seg(labelmap, volume.dicom, tmp_path / "out" / "segmentation.dcm", [MODEL])
    assert result.written and result.reason is None and result.empty_segments == ()
    assert result.path == tmp_path / "out" / "segmentation.dcm"
    labels = sitk.GetArrayFromImage(labelmap)
    assert result.n_frames == sum(int((labels[z] == v).any()) for z in range(labels.shape[0]) for v in (1, 2, 3))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["segmentation.dcm"]  # no temp file left
    _check_with_all_readers(result.path, volume, labelmap, tmp_path, [1, 2, 3])


def test_seg_content_terminology_algorithm_references(phantom_series, tmp_path, strict_pydicom):
    volume, labelmap = phantom_series
    result = write_dicom_seg(labelmap, volume.dicom, tmp_path / "seg.dcm", [MODEL],
                             series_description="test export", series_number=777)
    ds = pydicom.dcmread(result.path)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.SeriesDescription == "test export" and ds.SeriesNumber == 777
    assert ds.StudyInstanceUID == volume.dicom.study_instance_uid
    assert ds.FrameOfReferenceUID == volume.dicom.frame_of_reference_uid
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.dicom.series_instance_uid
    for item, value in zip(ds.SegmentSequence, (1, 2, 3), strict=True):
        term = TERMINOLOGY[value]
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentAlgorithmName == "covidct-segmenter-test [DEMO: synthetic phantoms]"
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmVersion == "1.2.3" and algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == term.type[0]
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == term.category[0]
        if term.anatomic_region:
            assert item.AnatomicRegionSequence[0].CodeValue == "39607008"  # lung
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "44029006"  # left lung
    assert ds.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "3341006"  # right lung
    # Each frame references the source instance at its own position.
    where = dict(zip(volume.dicom.sop_instance_uids, volume.dicom.image_positions, strict=True))
    for frame in ds.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ipp = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(ipp, where[ref], atol=1e-3)
    # New UIDs on every export
    again = pydicom.dcmread(write_dicom_seg(labelmap, volume.dicom, tmp_path / "seg2.dcm", [MODEL]).path)
    assert again.SeriesInstanceUID != ds.SeriesInstanceUID and again.SOPInstanceUID != ds.SOPInstanceUID


def test_threshold_method_identified_when_no_segmentation_model(phantom_series, tmp_path):
    volume, labelmap = phantom_series
    classifier = {"id": "covidct-classifier", "version": "2.0.0", "task": "classification", "demo": False}
    for models in ([], [classifier]):  # a classifier did not make the labelmap
        ds = pydicom.dcmread(write_dicom_seg(labelmap, volume.dicom, tmp_path / "seg.dcm", models).path)
        assert ds.SegmentSequence[0].SegmentAlgorithmName == "CovidCTAnalysis threshold method"
        assert ds.ContentDescription == "Lungs and lesions, automatic; research use, not for diagnosis"


def test_demo_label_survives_long_model_ids(phantom_series, tmp_path):
    volume, labelmap = phantom_series
    model = {**MODEL, "id": "x" * 70}
    ds = pydicom.dcmread(write_dicom_seg(labelmap, volume.dicom, tmp_path / "seg.dcm", [model]).path)
    name = ds.SegmentSequence[0].SegmentAlgorithmName
    assert len(name) == 64 and name.endswith("[DEMO: synthetic phantoms]")
    assert "DEMO" in ds.ContentDescription and "not for diagnosis" in ds.ContentDescription


def test_empty_lesion_segment_left_out_with_warning(phantom_series, tmp_path, caplog, strict_pydicom):
    volume, labelmap = phantom_series
    labels = sitk.GetArrayFromImage(labelmap)
    labels[labels == 3] = 1
    lungs_only = labelmap_like(labels, volume.image)
    caplog.set_level(logging.WARNING)
    result = write_dicom_seg(lungs_only, volume.dicom, tmp_path / "seg.dcm", [MODEL])
    assert result.written and result.empty_segments == ("Lesion",)
    assert "empty segment(s) left out: Lesion" in caplog.text
    _check_with_all_readers(result.path, volume, lungs_only, tmp_path, [1, 2])


def test_all_empty_labelmap_is_not_written(phantom_series, tmp_path):
    volume, labelmap = phantom_series
    empty = labelmap_like(np.zeros(labelmap.GetSize()[::-1], np.uint8), volume.image)
    result = write_dicom_seg(empty, volume.dicom, tmp_path / "seg.dcm", [MODEL])
    assert not result.written and "labelmap is empty" in result.reason
    assert not (tmp_path / "seg.dcm").exists()


def test_labelmap_off_the_source_grid_is_refused(phantom_series, tmp_path):
    volume, labelmap = phantom_series
    shifted = sitk.Image(labelmap)
    shifted.SetOrigin([o + 2.0 for o in labelmap.GetOrigin()])
    with pytest.raises(DicomSegError, match="does not lie on the source series grid"):
        write_dicom_seg(shifted, volume.dicom, tmp_path / "seg.dcm", [MODEL])
    with pytest.raises(DicomSegError, match="does not lie on the source series grid"):
        write_dicom_seg(labelmap[:, :, 1:], volume.dicom, tmp_path / "seg.dcm", [MODEL])
    assert not (tmp_path / "seg.dcm").exists()


def test_labelmap_with_unknown_values_is_refused(phantom_series, tmp_path):
    volume, labelmap = phantom_series
    labels = sitk.GetArrayFromImage(labelmap)
    labels[0, 0, 0] = 7
    with pytest.raises(DicomSegError, match=r"labelmap holds values \[7\]"):
        write_dicom_seg(labelmap_like(labels, volume.image), volume.dicom, tmp_path / "seg.dcm", [MODEL])


def test_labelmap_in_reversed_slice_order_is_reindexed(phantom_series, tmp_path, strict_pydicom):
    """Same voxels stored with z reversed (as a viewer may): exported exactly, frames still matched by position."""
    volume, labelmap = phantom_series
    n = labelmap.GetSize()[2]
    flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(labelmap)[::-1].copy())
    flipped.SetSpacing(labelmap.GetSpacing())
    flipped.SetOrigin(labelmap.TransformIndexToPhysicalPoint((0, 0, n - 1)))
    d = np.array(labelmap.GetDirection()).reshape(3, 3)
    d[:, 2] *= -1
    flipped.SetDirection(tuple(d.ravel()))
    result = write_dicom_seg(flipped, volume.dicom, tmp_path / "seg.dcm", [MODEL])
    seg = hd.seg.segread(result.path)
    pixels = seg.get_pixels_by_source_instance(list(volume.dicom.sop_instance_uids), segment_numbers=[1, 2, 3],
                                               assert_missing_frames_are_empty=True)
    labels = sitk.GetArrayFromImage(labelmap)
    for n_seg, value in ((1, 1), (2, 2), (3, 3)):
        np.testing.assert_array_equal(pixels[..., n_seg - 1] > 0, labels == value)


def test_badly_anonymised_source_loads_but_no_seg(tmp_path, caplog):
    """The damage the issue describes for P001: blank SOP UIDs, UUID study/series UIDs, no FoR, no name."""
    image, truth = chest_volume(seed=22)
    write_dicom_series(image, tmp_path / "anon")
    edit_series(tmp_path / "anon", SOPInstanceUID="", StudyInstanceUID="98C14734-ASSH-4A1B-9C2D-0E1F2A3B4C5D",
                SeriesInstanceUID="98C14734-ASSH-5B2C-8D3E-1F2A3B4C5D6E", FrameOfReferenceUID=None, PatientName=None)
    caplog.clear()  # what follows must not log the damaged UIDs in full (they carry the patient ID)
    caplog.set_level(logging.DEBUG)
    volume = load_dicom_series(tmp_path / "anon")  # still loads and can be analysed
    assert volume.image.GetSize() == image.GetSize()
    problem = seg_reference_problem(volume.dicom)
    assert "SOPInstanceUID is blank on 20 of 20 instances" in problem
    assert "SeriesInstanceUID '98C1...' (36 characters) is not a valid DICOM UID (UUID string)" in problem
    assert "StudyInstanceUID '98C1...' (36 characters) is not a valid DICOM UID (UUID string)" in problem
    assert "FrameOfReferenceUID is missing" in problem
    labelmap = labelmap_like(sitk.GetArrayFromImage(truth), volume.image)
    result = write_dicom_seg(labelmap, volume.dicom, tmp_path / "out" / "seg.dcm", [MODEL])
    assert result == SegWriteResult(False, f"the source series cannot be referenced by a DICOM SEG: {problem}",
                                    None, 0, ())
    assert not (tmp_path / "out" / "seg.dcm").exists()
    assert "FrameOfReferenceUID is missing" in caplog.text
    assert "ASSH-4A1B" not in caplog.text  # damaged UIDs are shortened: they can carry the patient ID


def test_sop_class_blanked_in_dataset_taken_from_file_meta(tmp_path):
    """An anonymiser blanked SOPClassUID but the file meta keeps it: the SEG can still reference the images."""
    image, truth = chest_volume(seed=25)
    write_dicom_series(image, tmp_path / "ct")
    edit_series(tmp_path / "ct", SOPClassUID="")
    volume = load_dicom_series(tmp_path / "ct")
    assert seg_reference_problem(volume.dicom) is None
    result = write_dicom_seg(labelmap_like(sitk.GetArrayFromImage(truth), volume.image), volume.dicom,
                             tmp_path / "seg.dcm", [MODEL])
    ds = pydicom.dcmread(result.path)
    assert ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPClassUID == \
        "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    report = run_dciodvfy(result.path)
    assert not report.errors, report.output


def test_source_refused_by_highdicom_gives_a_reason_not_a_crash(phantom_series, tmp_path, monkeypatch, caplog):
    from CovidCTAnalysisLib.results import dicom_seg
    def refuse(**kwargs):
        raise ValueError("Source images must have the same Frame of Reference")

    monkeypatch.setattr(dicom_seg, "_build_segmentation", refuse)
    volume, labelmap = phantom_series
    result = write_dicom_seg(labelmap, volume.dicom, tmp_path / "seg.dcm", [MODEL])
    assert not result.written and result.path is None
    assert result.reason == ("highdicom could not build a SEG from this source (ValueError: Source images must "
                             "have the same Frame of Reference)")
    assert "DICOM SEG not written" in caplog.text and not (tmp_path / "seg.dcm").exists()


def test_non_dicom_input_says_seg_needs_dicom(phantom_series):
    volume, _ = phantom_series
    nifti = CTVolume(image=volume.image, path=Path("ct.nii.gz"), source_format="nifti")
    assert "DICOM SEG needs a DICOM source series (the input was nifti)" in seg_unavailable_reason(nifti)
    assert seg_unavailable_reason(volume) is None


def test_report_entry_shape(phantom_series, tmp_path):
    volume, labelmap = phantom_series
    entry = write_dicom_seg(labelmap, volume.dicom, tmp_path / "seg.dcm", [MODEL]).as_report()
    assert json.loads(json.dumps(entry))["written"] is True and entry["reason"] is None


# --- Real data ------------------------------------------------------------------------------------------------

def _threshold_labels(volume: CTVolume) -> sitk.Image:
    """A quick HU-threshold labelmap (lung band split at the midline, GGO band as lesion)."""
    hu = sitk.GetArrayFromImage(volume.image)
    lung = (hu > -1000) & (hu < -300)
    labels = np.zeros(hu.shape, np.uint8)
    half = hu.shape[2] // 2
    labels[:, :, half:][lung[:, :, half:]] = 1  # LPS +x, the patient's left, is the higher index here
    labels[:, :, :half][lung[:, :, :half]] = 2
    labels[lung & (hu > -700)] = 3
    labels[:20] = 0  # some empty frames, to exercise omitted frames
    return labelmap_like(labels, volume.image)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_p001_repaired_seg_valid(shared_data, tmp_path, strict_pydicom):
    volume = load_dicom_series(shared_data / "covid-ct-md" / "dicom" / "P001-repaired-uids")
    assert seg_reference_problem(volume.dicom) is None
    labelmap = _threshold_labels(volume)
    result = write_dicom_seg(labelmap, volume.dicom, tmp_path / "segmentation.dcm", [MODEL])
    assert result.written
    _check_with_all_readers(result.path, volume, labelmap, tmp_path, [1, 2, 3])


# --- End to end: covidct analyze on a DICOM folder --------------------------------------------------------------

def _analyze(args: list[str]) -> int:
    try:
        from CovidCTAnalysisLib.cli.main import main
    except ImportError as exc:
        pytest.skip(f"covidct CLI not importable yet: {exc}")
    pytest.importorskip("CovidCTAnalysisLib.threshold.lesions", reason="the threshold method is being built")
    return main(["analyze", *args, "--method", "threshold", "--progress", "none"])


def test_covidct_analyze_dicom_writes_valid_seg(tmp_path, strict_pydicom):
    image, _ = chest_volume(seed=23)
    write_dicom_series(image, tmp_path / "ct")
    out = tmp_path / "out"
    assert _analyze([str(tmp_path / "ct"), "--output-dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dicom_seg"]["written"] is True and (out / "segmentation.dcm").is_file()
    volume = load_dicom_series(tmp_path / "ct")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelmap.nii.gz")))
    present = [v for v in (1, 2, 3) if (labels == v).any()]
    assert present[:2] == [1, 2]  # both lungs found by the threshold method
    _check_with_all_readers(out / "segmentation.dcm", volume, labelmap_like(labels, volume.image), tmp_path, present)


def test_covidct_analyze_unreferenceable_dicom(tmp_path):
    image, _ = chest_volume(seed=24)
    write_dicom_series(image, tmp_path / "anon")
    edit_series(tmp_path / "anon", SOPInstanceUID="", FrameOfReferenceUID=None)
    out = tmp_path / "out"
    assert _analyze([str(tmp_path / "anon"), "--output-dir", str(out)]) == 0  # analysed; SEG skipped
    report = json.loads((out / "report.json").read_text())
    assert report["dicom_seg"]["written"] is False
    assert "SOPInstanceUID is blank on 20 of 20" in report["dicom_seg"]["reason"]
    assert "FrameOfReferenceUID is missing" in report["dicom_seg"]["reason"]
    names = {p.name for p in out.iterdir()}
    assert {"report.json", "labelmap.nii.gz", "segmentation.seg.nrrd", "preview.png"} <= names
    assert "segmentation.dcm" not in names
    # --dicom-seg required turns this into a non-zero exit, with nothing written.
    out2 = tmp_path / "out2"
    assert _analyze([str(tmp_path / "anon"), "--output-dir", str(out2), "--dicom-seg", "required"]) == \
        DicomSegError.exit_code
    assert not out2.exists() or not any(out2.iterdir())


@pytest.mark.realdata
def test_real_totalsegmentator_series_blank_uids_no_seg(shared_data, tmp_path):
    """A real series anonymised to blank UIDs: loads, but no SEG, and the reason names the UIDs."""
    volume = load_dicom_series(shared_data / "totalsegmentator" / "example_ct_dicom")
    labelmap = _threshold_labels(volume)
    result = write_dicom_seg(labelmap, volume.dicom, tmp_path / "seg.dcm", [MODEL])
    assert not result.written and result.path is None
    assert "SOPInstanceUID is blank on 20 of 20 instances" in result.reason
    assert "StudyInstanceUID is blank" in result.reason and "SeriesInstanceUID is blank" in result.reason
    assert not (tmp_path / "seg.dcm").exists()


@pytest.mark.realdata
@pytest.mark.slow
def test_real_p001_as_published(shared_data, tmp_path):
    """P001 as it lies in shared/data (no PatientName): either a valid SEG or a reason naming the bad UIDs."""
    volume = load_dicom_series(shared_data / "covid-ct-md" / "dicom" / "P001")
    problem = seg_reference_problem(volume.dicom)
    result = write_dicom_seg(_threshold_labels(volume), volume.dicom, tmp_path / "seg.dcm", [MODEL])
    if problem:
        assert not result.written and problem in result.reason
    else:
        assert result.written
        report = run_dciodvfy(result.path)
        assert not report.errors, report.output


def test_missing_validator_skips_locally_and_fails_under_ci(monkeypatch):
    import dicom_validators

    monkeypatch.setattr(dicom_validators, "find_dciodvfy", lambda: None)
    monkeypatch.setattr(dicom_validators, "find_segimage2itkimage", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="dciodvfy"):
        dicom_validators.require_dciodvfy()
    with pytest.raises(pytest.fail.Exception, match="segimage2itkimage"):
        dicom_validators.require_segimage2itkimage()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="dicom3tools"):
        dicom_validators.require_dciodvfy()


SOURCE_ORIENTATIONS = {
    # slices stored head to feet (index z runs inferior), rows bottom to top
    "reversed-stack": (np.diag([1.0, -1.0, -1.0]), (64, 64, 20)),
    # oblique axial: tilted 15 degrees about the patient's left-right axis, turned 10 degrees in plane
    "tilted": (rotation(0, 15.0) @ rotation(2, 10.0), (64, 64, 20)),
    # coronal slices: rows run left-right, columns superior to inferior, slices stacked anterior to posterior
    "coronal": (np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]), (64, 20, 64)),
}


@pytest.mark.parametrize("orientation", list(SOURCE_ORIENTATIONS))
def test_seg_frames_map_onto_reversed_tilted_and_coronal_sources(orientation, tmp_path, strict_pydicom):
    """Every SEG frame lands on the source instance it covers, whatever the source's orientation: dcmqi reads
    each segment back onto the source grid voxel for voxel, highdicom matches frames to source instances."""
    direction, size = SOURCE_ORIENTATIONS[orientation]
    image, truth = chest_volume(seed=21, size=size, direction=tuple(direction.ravel()))
    write_dicom_series(image, tmp_path / "ct")
    volume = load_dicom_series(tmp_path / "ct")
    assert np.allclose(np.array(volume.image.GetDirection()).reshape(3, 3)[:, :2], direction[:, :2], atol=1e-5)
    labelmap = sitk.Resample(truth, volume.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    labels = sitk.GetArrayFromImage(labelmap)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    result = write_dicom_seg(labelmap, volume.dicom, tmp_path / "seg.dcm", [MODEL])
    assert result.written, result.reason
    _check_with_all_readers(result.path, volume, labelmap, tmp_path, [1, 2, 3])
