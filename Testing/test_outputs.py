"""Outputs: seg.nrrd round trip (slicerio), labelmap geometry, atomic writing, preview."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from CovidCTAnalysisLib.constants import LABEL_NAMES, LESION, TERMINOLOGY
from CovidCTAnalysisLib.errors import OutputError
from CovidCTAnalysisLib.results.outputs import (
    atomic_output_dir,
    check_output_dir,
    write_labelmap,
    write_seg_nrrd,
)


def _labelmap() -> sitk.Image:
    lab = np.zeros((12, 30, 40), np.uint8)
    lab[2:10, 5:25, 3:18] = 2
    lab[2:10, 5:25, 22:37] = 1
    lab[4:7, 8:12, 6:10] = LESION
    lab[5:8, 15:18, 30:34] = LESION
    img = sitk.GetImageFromArray(lab)
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((-120.5, 33.0, -210.0))
    # an oblique, non-identity direction to catch axis/order mistakes
    c, s = np.cos(0.3), np.sin(0.3)
    img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    return img


def test_seg_nrrd_round_trip_through_slicerio(tmp_path):
    import slicerio

    lab = _labelmap()
    p = write_seg_nrrd(lab, tmp_path / "segmentation.seg.nrrd")
    seg = slicerio.read_segmentation(str(p))
    arr = sitk.GetArrayFromImage(lab)
    voxels = seg["voxels"]
    assert voxels.shape == lab.GetSize()  # (i, j, k)
    assert np.array_equal(voxels.transpose(2, 1, 0), arr)
    m = np.array(seg["ijkToLPS"])
    d = np.array(lab.GetDirection()).reshape(3, 3)
    assert np.allclose(m[:3, :3], d * np.array(lab.GetSpacing()))
    assert np.allclose(m[:3, 3], lab.GetOrigin())
    by_label = {s["labelValue"]: s for s in seg["segments"]}
    assert set(by_label) == set(LABEL_NAMES)
    for label, name in LABEL_NAMES.items():
        s = by_label[label]
        t = TERMINOLOGY[label]
        assert s["name"] == name
        assert np.allclose(s["color"], np.array(t.color_rgb) / 255.0, atol=1e-4)
        assert s["terminology"]["category"] == [t.category[1], t.category[0], t.category[2]]
        assert s["terminology"]["type"] == [t.type[1], t.type[0], t.type[2]]
        if t.anatomic_region:
            assert s["terminology"]["anatomicRegion"] == [t.anatomic_region[1], t.anatomic_region[0],
                                                         t.anatomic_region[2]]
        assert int((voxels == s["labelValue"]).sum()) == int((arr == label).sum())


def test_labelmap_nifti_keeps_input_geometry(tmp_path):
    lab = _labelmap()
    p = write_labelmap(lab, tmp_path / "labelmap.nii.gz")
    back = sitk.ReadImage(str(p))
    assert back.GetSize() == lab.GetSize()
    assert np.allclose(back.GetSpacing(), lab.GetSpacing(), atol=1e-5)
    assert np.allclose(back.GetOrigin(), lab.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetDirection(), lab.GetDirection(), atol=1e-5)
    assert back.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(lab))


def test_error_inside_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output_dir(out) as tmp:
        (tmp / "report.json").write_text("{}")
        raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    deep = tmp_path / "a" / "b" / "out"
    with pytest.raises(KeyboardInterrupt), atomic_output_dir(deep) as tmp:
        (tmp / "labelmap.nii.gz").write_bytes(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == [], "folders created for the output are removed again"


def test_refuses_overwrite_without_force_and_keeps_old(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "report.json").write_text("old")
        (tmp / "preview.png").write_text("old png")
    (out / "mine.txt").write_text("user file")
    with pytest.raises(OutputError, match=r"exists and is not empty.*--force"), atomic_output_dir(out) as tmp:
        (tmp / "report.json").write_text("new")
    assert (out / "report.json").read_text() == "old"
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "report.json").write_text("new")
    assert (out / "report.json").read_text() == "new"
    assert not (out / "preview.png").exists(), "a stale output of the previous run must not survive"
    assert (out / "mine.txt").read_text() == "user file", "files we did not write are left alone"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_dir_checks(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is an existing file"):
        check_output_dir(f)
    inp = tmp_path / "data" / "ct.nii.gz"
    inp.parent.mkdir()
    inp.write_text("x")
    with pytest.raises(OutputError, match="contains the input"):
        check_output_dir(tmp_path / "data", force=True, inputs=(inp,))
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty") == (tmp_path / "empty").resolve()


def test_preview_png_through_lesion_richest_slices(tmp_path):
    from CovidCTAnalysisLib.results.preview import choose_slices, write_preview

    lab = _labelmap()
    arr = sitk.GetArrayFromImage(lab)
    z, y = choose_slices(arr)
    les = arr == LESION
    assert les[z].sum() == max(les[k].sum() for k in range(arr.shape[0]))
    assert les[:, y].sum() == max(les[:, k].sum() for k in range(arr.shape[1]))
    ct = sitk.GetImageFromArray(np.where(arr > 0, -800, 40).astype(np.int16))
    ct.CopyInformation(lab)
    p = write_preview(ct, lab, tmp_path / "preview.png", ["Classification: COVID-19", "research use"])
    data = p.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
