"""load_ct and the input refusals: each bad input gets a clear message, a non-zero exit, no output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.loading.load import load_ct


def simple_ct(size=(48, 40, 24), spacing=(4.0, 4.0, 5.0), dtype=np.int16) -> sitk.Image:
    """A plausible CT-valued box (air, body, two dark lungs); enough for loading and checks."""
    nx, ny, nz = size
    arr = np.full((nz, ny, nx), -1000, dtype=np.float32)
    arr[:, ny // 6: -ny // 6, nx // 8: -nx // 8] = 40.0
    arr[2:-2, ny // 4: -ny // 4, nx // 5: nx // 2 - 2] = -850.0
    arr[2:-2, ny // 4: -ny // 4, nx // 2 + 2: -nx // 5] = -850.0
    img = sitk.GetImageFromArray(arr.astype(dtype))
    img.SetSpacing(spacing)
    img.SetOrigin((-100.0, -80.0, -60.0))
    return img


def _write(img: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(img, str(path))
    return path


def _main_refuses(input_path: Path, tmp_path: Path, *needles: str, extra=()) -> None:
    """Through the CLI: non-zero exit, one 'error:' line naming the value, no output folder."""
    from CovidCTAnalysisLib.cli.main import main

    out = tmp_path / "out"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["analyze", str(input_path), "--output-dir", str(out), "--method", "threshold",
                     "--progress", "none", *extra])
    text = err.getvalue()
    assert code == InputError.exit_code, text
    assert text.startswith("error: ") and "Traceback" not in text
    for needle in needles:
        assert needle in text, (needle, text)
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "temp folder left behind"


@pytest.mark.parametrize("suffix,fmt", [(".nii.gz", "nifti"), (".nii", "nifti"), (".nrrd", "nrrd"), (".mha", "mha")])
def test_loads_supported_formats(tmp_path, suffix, fmt):
    img = simple_ct()
    vol = load_ct(_write(img, tmp_path / f"ct{suffix}"))
    assert vol.source_format == fmt
    assert vol.image.GetSize() == img.GetSize()
    assert np.allclose(vol.image.GetSpacing(), img.GetSpacing())
    assert np.array_equal(sitk.GetArrayViewFromImage(vol.image), sitk.GetArrayViewFromImage(img))


def test_loads_dicom_folder(tmp_path):
    from CovidCTAnalysisLib.phantom.write_dicom import write_dicom_series

    img = simple_ct()
    written = write_dicom_series(img, tmp_path / "dcm")
    vol = load_ct(tmp_path / "dcm")
    assert vol.source_format == "dicom" and vol.dicom is not None
    assert vol.dicom.series_instance_uid == written.series_instance_uid
    assert vol.image.GetSize() == img.GetSize()


def test_refuses_2d_image(tmp_path):
    img2d = sitk.GetImageFromArray(np.full((64, 64), -500, dtype=np.int16))
    p = _write(img2d, tmp_path / "slice.nrrd")
    with pytest.raises(InputError, match=r"2-D.*expected a 3-D CT"):
        load_ct(p)
    _main_refuses(p, tmp_path, "2-D", "(64, 64)")


def test_refuses_single_slice_volume(tmp_path):
    p = _write(simple_ct(size=(64, 64, 1)), tmp_path / "one.nii.gz")
    with pytest.raises(InputError, match=r"size \(64, 64, 1\).*2-D image"):
        load_ct(p)
    _main_refuses(p, tmp_path, "(64, 64, 1)", "2-D")


def test_refuses_non_ct_dicom(tmp_path):
    from CovidCTAnalysisLib.phantom.write_dicom import write_dicom_series

    write_dicom_series(simple_ct(), tmp_path / "mr", modality="MR")
    with pytest.raises(InputError, match="MR"):
        load_ct(tmp_path / "mr")
    _main_refuses(tmp_path / "mr", tmp_path, "MR")


def test_refuses_empty_file(tmp_path):
    p = tmp_path / "empty.nii.gz"
    p.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        load_ct(p)
    _main_refuses(p, tmp_path, "empty (0 bytes)")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_refuses_truncated_file(tmp_path, suffix):
    full = _write(simple_ct(), tmp_path / f"full{suffix}")
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        load_ct(cut)
    _main_refuses(cut, tmp_path, "truncated", str(cut.name))


def test_refuses_constant_volume(tmp_path):
    img = sitk.GetImageFromArray(np.full((24, 40, 48), -1000, dtype=np.int16))
    img.SetSpacing((4.0, 4.0, 5.0))
    p = _write(img, tmp_path / "const.nii.gz")
    with pytest.raises(InputError, match=r"constant \(every voxel is -1000\)"):
        load_ct(p)
    _main_refuses(p, tmp_path, "constant", "-1000")


def test_refuses_nan(tmp_path):
    img = simple_ct(dtype=np.float32)
    arr = sitk.GetArrayFromImage(img)
    arr[3, 4, 5] = np.nan
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(img)
    p = _write(bad, tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match=r"1 NaN/infinite"):
        load_ct(p)
    _main_refuses(p, tmp_path, "1 NaN")


def test_refuses_absurd_spacing(tmp_path):
    p = _write(simple_ct(spacing=(0.7, 0.7, 250.0)), tmp_path / "thick.nii.gz")
    with pytest.raises(InputError) as e:
        load_ct(p)
    assert "spacing (0.7, 0.7, 250) mm: slice spacing 250 is outside 0.1–20 mm" in str(e.value)
    _main_refuses(p, tmp_path, "slice spacing 250", "0.1–20 mm")


def test_refuses_volume_too_small_for_lungs(tmp_path):
    p = _write(simple_ct(size=(40, 40, 20), spacing=(1.0, 1.0, 1.0)), tmp_path / "small.nii.gz")
    with pytest.raises(InputError, match=r"LR extent 40.0 mm is below the 120 mm"):
        load_ct(p)
    _main_refuses(p, tmp_path, "40.0 mm", "120 mm")


def test_refuses_implausible_intensities(tmp_path):
    img = simple_ct(dtype=np.float32)
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] = -20000.0
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(img)
    p = _write(bad, tmp_path / "weird.nii.gz")
    with pytest.raises(InputError, match=r"\[-20000, 40\] is outside the plausible HU range"):
        load_ct(p)


def test_refuses_missing_and_unsupported(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_ct(tmp_path / "nope.nii.gz")
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    with pytest.raises(InputError, match=r"unsupported file type '.txt'"):
        load_ct(p)
    ok = _write(simple_ct(), tmp_path / "ct.nii.gz")
    with pytest.raises(InputError, match="--series-uid"):
        load_ct(ok, series_uid="1.2.3")


def test_refusal_in_json_mode_emits_error_event(tmp_path, capsys):
    from CovidCTAnalysisLib.cli.main import main

    p = tmp_path / "empty.nrrd"
    p.write_bytes(b"")
    code = main(["analyze", str(p), "--output-dir", str(tmp_path / "o"), "--method", "threshold",
                 "--progress", "json"])
    out = capsys.readouterr().out
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 2
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == 2
    assert "empty" in events[-1]["message"]
    assert not (tmp_path / "o").exists()


def test_refuses_nan_in_nrrd_and_names_position(tmp_path):
    img = simple_ct(dtype=np.float32)
    arr = sitk.GetArrayFromImage(img)
    arr[3, 4, 5] = np.inf
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(img)
    p = _write(bad, tmp_path / "nan.nrrd")
    with pytest.raises(InputError, match=r"1 NaN/infinite.*x=5, y=4, z=3"):
        load_ct(p)
