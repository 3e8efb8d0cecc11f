"""Bad DICOM folders: each gets a clear InputError, a non-zero exit from ``covidct analyze`` and no output files.

Each case is derived from a good synthetic chest series (written with
``dicom_write_series``) by one change: non-CT modality, a deleted middle slice,
a tilted gantry, uneven spacing, nothing at all, or files that are not DICOM.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.loading.dicom_series import load_dicom_series
from CovidCTAnalysisLib.phantom.write_dicom import write_dicom_series
from dicom_validators import chest_volume, edit_series


def _good(folder: Path, **kwargs):
    image, _ = chest_volume(seed=11)
    return write_dicom_series(image, folder, **kwargs)


def _mr(folder: Path) -> None:
    _good(folder, modality="MR")


def _missing_slice(folder: Path) -> None:
    written = _good(folder)
    written.files[len(written.files) // 2].unlink()


def _gantry_tilt(folder: Path) -> None:
    """A tilted acquisition: the image planes lean by 15 degrees, the table still moves along z."""
    _good(folder)
    t = np.radians(15.0)
    edit_series(folder, ImageOrientationPatient=[1, 0, 0, 0, f"{np.cos(t):.6f}", f"{np.sin(t):.6f}"],
                GantryDetectorTilt="15")


def _uneven_spacing(folder: Path) -> None:
    written = _good(folder)
    for k, f in enumerate(written.files):
        ds = pydicom.dcmread(f)
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ipp[2] += 0.15 * k * k / len(written.files)  # spacing grows along the stack
        ds.ImagePositionPatient = [f"{v:.4f}" for v in ipp]
        ds.save_as(f)


def _empty(folder: Path) -> None:
    folder.mkdir(parents=True)


def _not_dicom(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "slice_001.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (folder / "notes.txt").write_text("not an image\n")


BAD_FOLDERS = {
    "mr": (_mr, r"no CT series.*MR series.*expected Modality CT"),
    "missing_slice": (_missing_slice, r"missing slice\(s\): a gap of 8\.00 mm .* spacing is 4\.00 mm"),
    "gantry_tilt": (_gantry_tilt, r"gantry tilt: the slices are stacked at 15\.0 degrees.*GantryDetectorTilt = 15"),
    "uneven_spacing": (_uneven_spacing, r"uneven slice spacing"),
    "empty": (_empty, r"is empty; expected DICOM files"),
    "not_dicom": (_not_dicom, r"holds no DICOM images .*not DICOM: notes\.txt, slice_001\.dcm"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_folder_clear_input_error(tmp_path, case):
    make, message = BAD_FOLDERS[case]
    make(tmp_path / case)
    with pytest.raises(InputError, match=message):
        load_dicom_series(tmp_path / case)


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_dicom_series(tmp_path / "nowhere")


def test_the_good_series_behind_the_bad_ones_loads(tmp_path):
    """Control: every bad case above is one change away from this series, which loads."""
    written = _good(tmp_path / "good")
    vol = load_dicom_series(tmp_path / "good")
    assert vol.image.GetSize()[2] == len(written.files)


def _cli_main():
    try:
        from CovidCTAnalysisLib.cli.main import build_parser, main
        build_parser()
    except ImportError as exc:  # the CLI is being built by another engineer
        pytest.skip(f"covidct CLI not importable yet: {exc}")
    return main


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_folder_cli_nonzero_exit_no_outputs(tmp_path, case, capsys):
    main = _cli_main()
    make, message = BAD_FOLDERS[case]
    make(tmp_path / case)
    out = tmp_path / "out"
    rc = main(["analyze", str(tmp_path / case), "--output-dir", str(out), "--method", "threshold",
               "--progress", "none"])
    assert rc == InputError.exit_code
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp folder left behind
    err = capsys.readouterr().err
    assert "error:" in err and re.search(message, err)


def test_good_folder_cli_succeeds(tmp_path, capsys):
    """Control for the CLI cases: the unchanged series is analysed (exit 0, outputs written)."""
    main = _cli_main()
    pytest.importorskip("CovidCTAnalysisLib.threshold.lesions", reason="the threshold method is being built")
    _good(tmp_path / "good")
    out = tmp_path / "out"
    rc = main(["analyze", str(tmp_path / "good"), "--output-dir", str(out), "--method", "threshold",
               "--progress", "none"])
    assert rc == 0, capsys.readouterr().err
    assert {"report.json", "labelmap.nii.gz", "segmentation.dcm"} <= {p.name for p in out.iterdir()}
