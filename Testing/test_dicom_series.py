"""DICOM series input: series choice, slice order, exact geometry, compressed files, untidy folders, privacy."""

from __future__ import annotations

import logging
import random
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.loading.dicom_series import dicom_source_from_files, load_dicom_series
from CovidCTAnalysisLib.phantom.write_dicom import write_dicom_series
from CovidCTAnalysisLib.results.dicom_seg import seg_reference_problem
from dicom_validators import chest_volume, edit_series
from pydicom.fileset import FileSet

SECRET_NAME = "Doe^Janet"
SECRET_ID = "PID-7731-SECRET"


def _rotation_z(deg: float) -> tuple[float, ...]:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


def _values_at_same_points(loaded: sitk.Image, original: sitk.Image) -> np.ndarray:
    """The original resampled (nearest) onto the loaded grid: equal arrays mean equal physical geometry."""
    out = sitk.Resample(original, loaded, sitk.Transform(), sitk.sitkNearestNeighbor, -2000.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


@pytest.fixture
def chest(tmp_path):
    image, truth = chest_volume(seed=1)
    written = write_dicom_series(image, tmp_path / "ct", patient_name=SECRET_NAME, patient_id=SECRET_ID,
                                 file_name=SECRET_ID + "_{index:03d}.dcm")
    return image, written, tmp_path / "ct"


def test_geometry_and_hu_exact(chest):
    image, written, folder = chest
    vol = load_dicom_series(folder)
    assert vol.source_format == "dicom"
    assert vol.image.GetSize() == image.GetSize()
    np.testing.assert_allclose(vol.image.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.image.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(vol.image.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vol.image), np.rint(sitk.GetArrayFromImage(image)))
    assert vol.dicom.series_instance_uid == written.series_instance_uid
    assert vol.dicom.sop_instance_uids == written.sop_instance_uids  # ordered like z
    assert vol.dicom.instance_files == written.files
    assert seg_reference_problem(vol.dicom) is None


def test_geometry_agrees_with_simpleitk_own_sorting(chest):
    _, _, folder = chest
    vol = load_dicom_series(folder)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))  # GDCM sorts by position itself
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    ref = reader.Execute()
    np.testing.assert_allclose(vol.image.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.image.GetSpacing(), ref.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(vol.image.GetDirection(), ref.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vol.image), sitk.GetArrayFromImage(ref))


def test_sorted_by_position_not_file_name_or_instance_number(chest):
    image, written, folder = chest
    # Shuffle file names and InstanceNumbers so that neither follows the slice position.
    rng = random.Random(3)
    order = list(range(len(written.files)))
    rng.shuffle(order)
    temp = [f.rename(f.with_suffix(".tmp")) for f in written.files]
    for k, src in zip(order, temp, strict=True):
        src.rename(folder / f"img{k:03d}.dcm")
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = rng.randint(1, 999)
        ds.save_as(f)
    vol = load_dicom_series(folder)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vol.image), np.rint(sitk.GetArrayFromImage(image)))
    assert vol.dicom.sop_instance_uids == written.sop_instance_uids


@pytest.mark.parametrize("direction", [_rotation_z(25.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0),
                                       (1.0, 0, 0, 0, 0, 1.0, 0, -1.0, 0)],
                         ids=["oblique", "normal-against-stack", "coronal"])
def test_any_direction_keeps_physical_geometry(tmp_path, direction):
    image, _ = chest_volume(seed=2, size=(40, 36, 12), direction=direction)
    write_dicom_series(image, tmp_path / "ct")
    vol = load_dicom_series(tmp_path / "ct")
    # Each loaded voxel holds the original value at the same physical point.
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vol.image),
                                  np.rint(_values_at_same_points(vol.image, image)))
    d = np.array(vol.image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(d[:, 2], np.cross(d[:, 0], d[:, 1]), atol=1e-9)  # z runs along the slice normal


def test_compressed_transfer_syntax(tmp_path):
    image, _ = chest_volume(seed=4)
    written = write_dicom_series(image, tmp_path / "rle", compress=True)
    assert pydicom.dcmread(written.files[0]).file_meta.TransferSyntaxUID.is_compressed
    vol = load_dicom_series(tmp_path / "rle")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vol.image), np.rint(sitk.GetArrayFromImage(image)))


def test_smaller_series_and_scout_are_skipped_and_named(tmp_path, caplog):
    image, _ = chest_volume(seed=5)
    main = write_dicom_series(image, tmp_path / "mixed" / "chest", series_number=3)
    small = write_dicom_series(image[:, :, :6], tmp_path / "mixed" / "small", series_number=2,
                               study_instance_uid=main.study_instance_uid, series_description="thick recon")
    scout = write_dicom_series(image[:, :, :1], tmp_path / "mixed" / "scout", series_number=1,
                               image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), series_description="Topogram")
    caplog.set_level(logging.INFO, logger="CovidCTAnalysisLib")
    vol = load_dicom_series(tmp_path / "mixed")
    assert vol.dicom.series_instance_uid == main.series_instance_uid
    notes = "\n".join(vol.notes)
    assert "chosen: CT series 3" in notes and main.series_instance_uid in notes
    skipped = [n for n in vol.notes if n.startswith("skipped")]
    assert any(small.series_instance_uid in n and "fewer images" in n for n in skipped)
    assert any(scout.series_instance_uid in n and "localizer" in n for n in skipped)
    assert small.series_instance_uid in caplog.text  # the log names the skipped series too


def test_series_uid_picks_the_named_series(tmp_path):
    image, _ = chest_volume(seed=6)
    write_dicom_series(image, tmp_path / "two" / "a")
    small = write_dicom_series(image[:, :, :8], tmp_path / "two" / "b")
    vol = load_dicom_series(tmp_path / "two", series_uid=small.series_instance_uid)
    assert vol.image.GetSize()[2] == 8
    assert any("named by --series-uid" in n for n in vol.notes)
    with pytest.raises(InputError, match="is not in this folder"):
        load_dicom_series(tmp_path / "two", series_uid="1.2.3.4")


def test_mr_series_beside_ct_is_skipped(tmp_path):
    image, _ = chest_volume(seed=7)
    ct = write_dicom_series(image[:, :, :10], tmp_path / "mix" / "ct")
    mr = write_dicom_series(image, tmp_path / "mix" / "mr", modality="MR")  # larger, but not CT
    vol = load_dicom_series(tmp_path / "mix")
    assert vol.dicom.series_instance_uid == ct.series_instance_uid
    assert any(mr.series_instance_uid in n and "not CT" in n for n in vol.notes)
    with pytest.raises(InputError, match="expected a CT series"):
        load_dicom_series(tmp_path / "mix", series_uid=mr.series_instance_uid)


def test_stray_files_are_ignored_and_named(chest, tmp_path):
    image, written, folder = chest
    (folder / "notes.txt").write_text("scanned on Tuesday\n")
    thumb = sitk.GetImageFromArray(np.zeros((8, 8), np.uint8))
    sitk.WriteImage(thumb, str(folder / "thumbnail.png"))
    # A real DICOMDIR, made by pydicom's File-set writer, copied beside the slices.
    fs = FileSet()
    for f in written.files:
        fs.add(f)
    fs.write(tmp_path / "fileset")
    shutil.copy(tmp_path / "fileset" / "DICOMDIR", folder / "DICOMDIR")
    vol = load_dicom_series(folder)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vol.image), np.rint(sitk.GetArrayFromImage(image)))
    notes = "\n".join(vol.notes)
    assert "notes.txt" in notes and "thumbnail.png" in notes and "not DICOM" in notes
    assert "DICOMDIR" in notes and "directory index" in notes


def test_no_patient_identifiers_in_notes_logs_or_errors(chest, caplog):
    _, written, folder = chest
    (folder / "readme.txt").write_text("x")
    caplog.set_level(logging.DEBUG)
    vol = load_dicom_series(folder)
    written.files[len(written.files) // 2].unlink()
    with pytest.raises(InputError) as err:
        load_dicom_series(folder)
    text = "\n".join(vol.notes) + caplog.text + str(err.value)
    for secret in (SECRET_ID, "Doe", "Janet"):
        assert secret not in text


def test_dicom_source_from_files_orders_like_the_volume(chest):
    _, written, _ = chest
    shuffled = list(written.files)
    random.Random(1).shuffle(shuffled)
    source = dicom_source_from_files(shuffled)
    assert source.instance_files == written.files
    assert source.sop_instance_uids == written.sop_instance_uids
    assert source.frame_of_reference_uid == written.frame_of_reference_uid
    assert len(source.image_positions) == len(written.files)
    with pytest.raises(InputError):
        dicom_source_from_files([])


def test_blank_series_uids_still_load(tmp_path):
    """Badly anonymised data: blank SeriesInstanceUID/SOPInstanceUID must not stop the analysis."""
    image, _ = chest_volume(seed=8)
    write_dicom_series(image, tmp_path / "anon")
    edit_series(tmp_path / "anon", SeriesInstanceUID="", SOPInstanceUID="", StudyInstanceUID="",
                FrameOfReferenceUID=None, PatientName=None)
    vol = load_dicom_series(tmp_path / "anon")
    assert vol.image.GetSize() == image.GetSize()
    assert "SOPInstanceUID is blank" in seg_reference_problem(vol.dicom)


# --- Real data ------------------------------------------------------------------------------------------------

@pytest.mark.realdata
def test_real_p001_jpeg_lossless(shared_data):
    folder = shared_data / "covid-ct-md" / "dicom" / "P001"
    vol = load_dicom_series(folder)
    assert vol.image.GetSize() == (512, 512, 148)
    # Geometry straight from the headers, read here independently with pydicom.
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in folder.glob("*.dcm")]
    assert str(headers[0].file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.70"  # JPEG Lossless
    zs = sorted(float(h.ImagePositionPatient[2]) for h in headers)
    lowest = min(headers, key=lambda h: float(h.ImagePositionPatient[2]))
    np.testing.assert_allclose(vol.image.GetOrigin(), [float(v) for v in lowest.ImagePositionPatient], atol=1e-6)
    ps = [float(v) for v in lowest.PixelSpacing]
    np.testing.assert_allclose(vol.image.GetSpacing(), (ps[1], ps[0], (zs[-1] - zs[0]) / 147), atol=1e-6)
    # HU decoded by GDCM equal pydicom+pylibjpeg's decode with the rescale applied.
    hu = sitk.GetArrayFromImage(vol.image)
    for k in (0, 73, 147):
        ds = pydicom.dcmread(vol.dicom.instance_files[k])
        ref = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu[k], ref)
    # ... and with the published 256x256 NIfTI (2x2 averages of the same series, int16 rounding).
    nii = sitk.ReadImage(str(shared_data / "covid-ct-md" / "nifti" / "P001_256.nii.gz"))
    small = hu.astype(np.float64).reshape(148, 256, 2, 256, 2).mean(axis=(2, 4))
    assert np.abs(small - sitk.GetArrayFromImage(nii)).max() <= 0.5
    np.testing.assert_allclose(vol.image.GetOrigin()[2], nii.GetOrigin()[2], atol=1e-3)
    text = "\n".join(vol.notes)
    assert "98C14734" not in text  # the PatientID, which is also in the file names


@pytest.mark.realdata
def test_real_totalsegmentator_blank_uids_load(shared_data):
    vol = load_dicom_series(shared_data / "totalsegmentator" / "example_ct_dicom")  # JPEG 2000, blank UIDs
    assert vol.image.GetSize() == (512, 512, 20)
    problem = seg_reference_problem(vol.dicom)
    assert "SOPInstanceUID is blank on 20 of 20" in problem and "SeriesInstanceUID is blank" in problem


def test_per_slice_rescale_gives_the_same_hu(tmp_path):
    """Some scanners vary RescaleIntercept per slice; HU must not depend on it."""
    image, _ = chest_volume(seed=9)
    written = write_dicom_series(image, tmp_path / "ct")
    for k, f in enumerate(written.files):
        if k % 2:
            ds = pydicom.dcmread(f)
            stored = ds.pixel_array.astype(np.int32) + 1024  # same HU with intercept -1024
            ds.PixelData = stored.astype(np.int16).tobytes()
            ds.RescaleIntercept = "-1024"
            ds.save_as(f)
    vol = load_dicom_series(tmp_path / "ct")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vol.image), np.rint(sitk.GetArrayFromImage(image)))


def test_copied_instances_are_read_once(chest):
    image, written, folder = chest
    (folder / "backup").mkdir()
    for f in written.files[:5]:
        shutil.copy(f, folder / "backup" / f"copy_{f.name}")
    vol = load_dicom_series(folder)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vol.image), np.rint(sitk.GetArrayFromImage(image)))
    assert any("ignored 5 duplicate file(s)" in n for n in vol.notes)


def test_localizer_inside_the_same_series_is_skipped(tmp_path):
    """Some scanners put the scout in the CT series itself (same SeriesInstanceUID, another plane)."""
    image, _ = chest_volume(seed=10)
    main = write_dicom_series(image, tmp_path / "ct" / "axial")
    coronal = (1.0, 0, 0, 0, 0, 1.0, 0, -1.0, 0)
    scout_image, _ = chest_volume(seed=10, size=(64, 20, 1), direction=coronal)
    scout = write_dicom_series(scout_image, tmp_path / "ct" / "scout", study_instance_uid=main.study_instance_uid,
                               image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    edit_series(tmp_path / "ct" / "scout", SeriesInstanceUID=main.series_instance_uid)
    for uid in (None, main.series_instance_uid):
        vol = load_dicom_series(tmp_path / "ct", series_uid=uid)
        assert vol.dicom.instance_files == main.files
        assert any(n.startswith("skipped") and "localizer" in n for n in vol.notes)
    assert scout.files[0].exists()


def test_write_series_command_line(tmp_path, capsys):
    from CovidCTAnalysisLib.phantom.write_dicom import main

    image, _ = chest_volume(seed=12)
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    assert main([str(tmp_path / "ct.nii.gz"), str(tmp_path / "dcm"), "--compress"]) == 0
    vol = load_dicom_series(tmp_path / "dcm")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vol.image), np.rint(sitk.GetArrayFromImage(image)))
    np.testing.assert_allclose(vol.image.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert main([str(tmp_path / "ct.nii.gz"), str(tmp_path / "dcm")]) == 4  # never writes into a non-empty folder
    assert "not an empty folder" in capsys.readouterr().err
