"""Scans that load but lie (issue 13, part 1): values that are not HU, thick slices, a field of view that
cuts the lungs, prone and feet-first patients, NIfTI qform/sform disagreement, DICOM series mixing rescale
or pixel representation, Enhanced (multi-frame) CT, and scans too large for the memory target.
Each gives a correct result with a note, or a refusal naming the value; never a silently wrong answer."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import LEFT_LUNG, MAX_VOXELS, RIGHT_LUNG
from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.loading.load import load_ct
from CovidCTAnalysisLib.phantom.generator import make_phantom
from CovidCTAnalysisLib.phantom.write_dicom import write_dicom_series

SIZE = (64, 64, 40)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom("covid", 3, size=SIZE)


def _write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def _analyze(path: Path, out: Path):
    from CovidCTAnalysisLib.pipeline import analyze

    return analyze(path, out, method="threshold", segment="always").report


# --- values that are not HU ------------------------------------------------------------------------------

def test_lost_rescale_intercept_is_corrected_and_said(phantom, tmp_path):
    raw = sitk.Cast(sitk.Cast(phantom.image, sitk.sitkInt32) + 1024, sitk.sitkUInt16)  # air ~24, water 1024
    rep_raw = _analyze(_write(raw, tmp_path / "raw.nii.gz"), tmp_path / "o_raw")
    rep_hu = _analyze(_write(phantom.image, tmp_path / "hu.nii.gz"), tmp_path / "o_hu")
    notes = " ".join(rep_raw["input"]["notes"])
    assert "rescale intercept (-1024) was lost" in notes and "1024 was subtracted" in notes
    assert not any("intercept" in n for n in rep_hu["input"]["notes"])
    assert rep_raw["segments"] == rep_hu["segments"]  # after the correction: exactly the HU result
    vol = load_ct(tmp_path / "raw.nii.gz")
    assert np.array_equal(sitk.GetArrayViewFromImage(vol.image), sitk.GetArrayViewFromImage(phantom.image))


def test_lost_intercept_in_a_dicom_series_is_corrected(phantom, tmp_path):
    written = write_dicom_series(phantom.image, tmp_path / "dcm")
    for f in written.files:  # the converter dropped the -1024 intercept: stored values = HU + 1024, intercept 0
        ds = pydicom.dcmread(f)
        ds.PixelData = (ds.pixel_array.astype(np.int32) + 1024).astype(np.int16).tobytes()
        ds.save_as(f)
    vol = load_ct(tmp_path / "dcm")
    assert any("1024 was subtracted" in n for n in vol.notes)
    assert float(np.median(sitk.GetArrayViewFromImage(vol.image)[:, :3, :3])) < -900  # corner air is air again


def test_an_8bit_windowed_export_is_refused(phantom, tmp_path):
    hu = sitk.GetArrayFromImage(phantom.image).astype(np.float32)
    png_like = sitk.GetImageFromArray(np.clip((hu + 1350) / 1500 * 255, 0, 255).astype(np.uint8))
    png_like.CopyInformation(phantom.image)
    with pytest.raises(InputError, match=r"8-bit windowed export .* HU cannot be recovered"):
        load_ct(_write(png_like, tmp_path / "w.nii.gz"))


def test_normalised_intensities_are_refused(phantom, tmp_path):
    hu = sitk.GetArrayFromImage(phantom.image).astype(np.float32)
    norm = sitk.GetImageFromArray((hu - hu.min()) / (hu.max() - hu.min()))
    norm.CopyInformation(phantom.image)
    with pytest.raises(InputError, match=r"normalised to \[0, 1\]"):
        load_ct(_write(norm, tmp_path / "n.nii.gz"))


# --- thick slices, field of view --------------------------------------------------------------------------

def test_thick_slices_are_accepted_with_a_note(tmp_path):
    ph = make_phantom("covid", 5, spacing=(2.0, 2.0, 10.0))
    rep = _analyze(_write(ph.image, tmp_path / "thick.nii.gz"), tmp_path / "o")
    note = next(n for n in rep["input"]["notes"] if n.startswith("thick slices"))
    assert "10 mm apart" in note and "lesion volumes" in note
    thin = load_ct(_write(make_phantom("covid", 5, spacing=(2.0, 2.0, 2.0)).image, tmp_path / "thin.nii.gz"))
    assert not any(n.startswith("thick slices") for n in thin.notes)


def test_a_scan_stopping_inside_the_lungs_is_flagged(phantom, tmp_path):
    truth = sitk.GetArrayViewFromImage(phantom.truth)
    z = np.nonzero(truth.any(axis=(1, 2)))[0]
    top = int(z.min() + 0.6 * (z.max() - z.min()))  # keep the lower 60 % of the lungs
    rep = _analyze(_write(phantom.image[:, :, : top + 1], tmp_path / "cut.nii.gz"), tmp_path / "o")
    warning = next(w for w in rep["warnings"] if w.startswith("the scan cuts the lungs"))
    assert "superior" in warning


def test_a_field_of_view_cutting_a_lung_sideways_is_flagged(phantom, tmp_path):
    truth = sitk.GetArrayViewFromImage(phantom.truth)
    x = np.nonzero(truth.any(axis=(0, 1)))[0]
    rep = _analyze(_write(phantom.image[int(x.min()) + 8:, :, :], tmp_path / "cut.nii.gz"), tmp_path / "o")
    text = " ".join(rep["warnings"])
    assert "cuts the lungs" in text or "may be cut off by the field of view" in text


# --- patient position -------------------------------------------------------------------------------------

POSITIONS = {  # DICOM PatientPosition -> image direction (columns: i, j, k axes in LPS) as scanners write it
    "HFP": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "FFS": (-1, 0, 0, 0, 1, 0, 0, 0, -1),
    "FFP": (1, 0, 0, 0, -1, 0, 0, 0, -1),
}


def _side_volumes(labelmap: sitk.Image) -> dict[int, float]:
    arr = sitk.GetArrayViewFromImage(labelmap)
    return {lab: float(np.count_nonzero(arr == lab)) * float(np.prod(labelmap.GetSpacing())) / 1000
            for lab in (LEFT_LUNG, RIGHT_LUNG)}


@pytest.mark.parametrize("position", sorted(POSITIONS))
def test_prone_and_feet_first_keep_the_patients_left(position, tmp_path):
    ph = make_phantom("normal", 7, size=SIZE, direction=POSITIONS[position])
    written = write_dicom_series(ph.image, tmp_path / "dcm")
    for f in written.files:
        ds = pydicom.dcmread(f)
        ds.PatientPosition = position  # the loader must place voxels by IOP/IPP, which already encode it
        ds.save_as(f)
    vol = load_ct(tmp_path / "dcm")
    assert np.allclose(vol.image.GetDirection(), POSITIONS[position], atol=1e-6)
    from CovidCTAnalysisLib.pipeline import analyze

    result = analyze(tmp_path / "dcm", tmp_path / "o", method="threshold", segment="always")
    got, want = _side_volumes(result.labelmap), _side_volumes(ph.truth)
    for lab in (LEFT_LUNG, RIGHT_LUNG):  # a left/right swap would miss by the (~15 %) difference between the lungs
        assert got[lab] == pytest.approx(want[lab], rel=0.08), (position, got, want)
    lab = sitk.GetArrayViewFromImage(result.labelmap)
    left_x = [result.labelmap.TransformIndexToPhysicalPoint([int(i) for i in idx[::-1]])[0]
              for idx in np.argwhere(lab == LEFT_LUNG)[::50]]
    right_x = [result.labelmap.TransformIndexToPhysicalPoint([int(i) for i in idx[::-1]])[0]
               for idx in np.argwhere(lab == RIGHT_LUNG)[::50]]
    assert np.mean(left_x) > np.mean(right_x)  # LPS +x is the patient's left


# --- NIfTI qform vs sform ---------------------------------------------------------------------------------

def _with_codes(src: Path, dst: Path, qcode: int, scode: int, srow: tuple[float, ...]) -> Path:
    b = bytearray(src.read_bytes())
    b[252:256] = struct.pack("<2h", qcode, scode)
    b[280:328] = struct.pack("<12f", *srow)
    dst.write_bytes(bytes(b))
    return dst


@pytest.mark.parametrize(("qcode", "scode", "used"), [(1, 1, "sform"), (1, 2, "qform"), (2, 4, "qform")])
def test_qform_sform_disagreement_is_read_as_itk_does_and_said(phantom, tmp_path, qcode, scode, used):
    src = _write(phantom.image, tmp_path / "ct.nii")
    sp, o = phantom.image.GetSpacing(), phantom.image.GetOrigin()
    # the sform mirrors left and right (RAS x axis +) and moves the origin: the classic wrong-side mix-up
    srow = (sp[0], 0, 0, o[0] + 7.0, 0, -sp[1], 0, -o[1], 0, 0, sp[2], o[2])
    path = _with_codes(src, tmp_path / "mixed.nii", qcode, scode, srow)
    vol = load_ct(path)
    note = next(n for n in vol.notes if "qform" in n)
    assert f"with the {used}" in note and "which side is the patient's left" in note
    x_sign = vol.image.GetDirection()[0]
    assert x_sign == pytest.approx(1.0 if used == "qform" else -1.0)  # the note says what ITK really did
    assert not any("qform" in n for n in load_ct(src).notes)  # agreeing transforms: no note


# --- DICOM series that mix rescale or pixel representation ------------------------------------------------

def test_mixed_rescale_slopes_and_intercepts_give_true_hu(phantom, tmp_path):
    written = write_dicom_series(phantom.image, tmp_path / "dcm")
    for k, f in enumerate(written.files):
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.float64)
        slope, intercept = ((1.0, -1024.0), (0.5, -1024.0), (2.0, -3000.0))[k % 3]
        ds.PixelData = np.rint((hu - intercept) / slope).astype(np.int16).tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept)
        ds.save_as(f)
    vol = load_ct(tmp_path / "dcm")
    diff = np.abs(sitk.GetArrayFromImage(vol.image).astype(float) - sitk.GetArrayFromImage(phantom.image).round())
    assert diff.max() <= 1.0  # slope 2 rounds to 2 HU steps; nothing else may differ


@pytest.mark.parametrize("same_rescale", [True, False])
def test_mixed_pixel_representation_gives_true_hu(phantom, tmp_path, same_rescale):
    """First instance unsigned, the others signed (some stored values negative): the series reader must not
    take the first file's type for all (GDCM decodes each file with its own representation; checked here)."""
    written = write_dicom_series(phantom.image, tmp_path / "dcm")
    want = np.maximum(sitk.GetArrayFromImage(phantom.image).round(), -1024)
    for k, f in enumerate(written.files):
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.int32)
        if k == 0:  # unsigned, stored = HU + 1024
            ds.PixelRepresentation = 0
            ds.PixelData = np.clip(hu + 1024, 0, 65535).astype(np.uint16).tobytes()
            ds.RescaleIntercept = "-1024"
        elif same_rescale:  # signed, also HU + 1024, with padding rows stored negative (-2024 HU)
            stored = hu + 1024
            stored[:2] = -1000
            want[k, :2] = -2024
            ds.PixelData = stored.astype(np.int16).tobytes()
            ds.RescaleIntercept = "-1024"
        ds.save_as(f)
    vol = load_ct(tmp_path / "dcm")
    assert np.abs(sitk.GetArrayFromImage(vol.image).astype(float) - want).max() <= 0.5


# --- Enhanced CT, huge scans ------------------------------------------------------------------------------

def test_enhanced_multiframe_ct_is_refused_clearly(phantom, tmp_path):
    from pydicom.uid import EnhancedCTImageStorage

    written = write_dicom_series(phantom.image, tmp_path / "src")
    ds = pydicom.dcmread(written.files[0])
    frames = np.stack([pydicom.dcmread(f).pixel_array for f in written.files])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.NumberOfFrames = len(frames)
    ds.PixelData = frames.astype(np.int16).tobytes()
    (tmp_path / "enh").mkdir()
    ds.save_as(tmp_path / "enh" / "enhanced.dcm")
    with pytest.raises(InputError, match="multi-frame"):
        load_ct(tmp_path / "enh")


def test_a_huge_scan_is_refused_from_its_header(tmp_path):
    """1024x1024x1200 would need ~31 GB: refused before a pixel is read (the file holds only a header)."""
    n = (1024, 1024, 1200)
    assert np.prod(n) > MAX_VOXELS
    hdr = tmp_path / "huge.nhdr"
    hdr.write_text("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
                   f"sizes: {n[0]} {n[1]} {n[2]}\nspace directions: (0.4,0,0) (0,0.4,0) (0,0,0.3)\n"
                   "endian: little\nencoding: raw\nspace origin: (0,0,0)\ndata file: huge.raw\n")
    (tmp_path / "huge.raw").write_bytes(b"")  # no pixels at all: reading them would fail, not refuse
    with pytest.raises(InputError, match=r"1024×1024×1200 = 1258 million voxels, over the 160 million"):
        load_ct(hdr)


def test_a_huge_dicom_series_is_refused_from_its_headers(tmp_path):
    """Three slices of 8000x8000 (192 M voxels) whose pixel data is never decoded: the headers alone decide."""
    small = make_phantom("normal", 1, size=(48, 48, 3))
    written = write_dicom_series(small.image, tmp_path / "dcm")
    for f in written.files:
        ds = pydicom.dcmread(f)
        ds.Rows = ds.Columns = 8000
        ds.save_as(f)
    with pytest.raises(InputError, match=r"8000×8000×3 = 192 million voxels, over the 160 million"):
        load_ct(tmp_path / "dcm")
