"""The rib cage and diaphragm that bound the segmenter's lesions (threshold.rib_cage, post-processing step 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CovidCTAnalysisLib.inference.postprocess import postprocess_with_notes
from CovidCTAnalysisLib.inference.segment import segment
from CovidCTAnalysisLib.models.folder import LoadedModel
from CovidCTAnalysisLib.phantom.generator import make_phantom
from CovidCTAnalysisLib.threshold.lungs import segment_lungs
from CovidCTAnalysisLib.threshold.rib_cage import lesion_bounds
from test_postprocess import as_image, labelled
from test_segment import DIRECTIONS, Notes, ct, meta

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NORMAL001 = SHARED / "covid-ct-md" / "nifti" / "normal001_256.nii.gz"


@pytest.mark.parametrize("kind, seed, direction", [("covid", 100, None), ("pneumonia", 101, "random")])
def test_the_cage_holds_the_lungs_and_lesions_and_leaves_out_the_chest_wall_and_abdomen(kind, seed, direction):
    ph = make_phantom(kind, seed, spacing=(2.5, 2.5, 3.0), direction=direction)
    bounds = lesion_bounds(ph.image, segment_lungs(ph.image))
    cage = sitk.GetArrayFromImage(bounds.rib_cage) > 0
    below = sitk.GetArrayFromImage(bounds.below_diaphragm) > 0
    truth = sitk.GetArrayFromImage(ph.truth)
    hu = sitk.GetArrayFromImage(ph.image)
    assert cage.shape == truth.shape
    for value in (1, 2, 3):  # the true lungs and lesions lie inside (subpleural lesions reach the ribs)
        assert (cage & (truth == value)).sum() >= 0.98 * (truth == value).sum(), value
    # Of the body around the lungs, chest-wall muscle, fat and skin stay outside: the cage is the rib hull,
    # not the body outline nor the bounding box of the lungs.
    lung_slices = np.zeros(truth.shape, bool)
    axial = np.argmax([abs(v) for v in np.asarray(ph.image.GetDirection()).reshape(3, 3)[2]])  # array axis along S-I
    axial = 2 - axial
    idx = np.nonzero((truth > 0).any(axis=tuple(a for a in range(3) if a != axial)))[0]
    sl = [slice(None)] * 3
    sl[axial] = slice(idx.min(), idx.max() + 1)
    lung_slices[tuple(sl)] = True
    body = (hu > -500) & lung_slices
    assert 0.2 < (cage & body).sum() / body.sum() < 0.6
    sl[axial] = slice(0, max(idx.min() - 3, 0))  # well below the lung bases: abdomen, never in the cage
    assert not cage[tuple(sl)].any()
    # Below the diaphragm: hardly any lung or lesion (basal consolidation may reach under its estimate).
    lesion = truth == 3
    assert (below & lesion).sum() <= (0.0 if kind == "covid" else 0.05) * lesion.sum()
    assert (below & (truth > 0)).sum() <= 0.01 * (truth > 0).sum()


def test_lesion_outside_the_cage_is_removed_and_the_rest_kept():
    arr = labelled(2, 1)  # lungs at array x 5:25 and 35:57, y 8:32, z 3:17
    arr[8:12, 14:20, 10:20] = 3  # inside the right lung
    arr[0:9, 10:30, 26:34] = 3  # one piece reaching the lungs and running below them ("liver")
    cage = np.zeros(arr.shape, bool)
    cage[3:17, 4:36, 2:60] = True  # the rib cage on the lung slices
    out, notes = postprocess_with_notes(as_image(arr), lesion_margin_mm=4.0, rib_cage=cage)
    out = sitk.GetArrayFromImage(out)
    assert (out[8:12, 14:20, 10:20] == 3).all()
    assert not out[0:3, 10:30, 26:34].any()  # below the cage: gone
    assert (out[3:9, 10:30, 26:34] == 3).all()  # the part inside stays (it still reaches the lungs)
    assert np.array_equal(np.isin(out, (1, 2)), np.isin(arr, (1, 2)))  # lungs untouched
    removed = 3 * 20 * 8 * 1.5 * 1.5 * 2.5 / 1000
    assert any(f"removed {removed:.1f} mL of lesion outside the rib cage" in n for n in notes), notes
    kept, _ = postprocess_with_notes(as_image(arr), lesion_margin_mm=4.0)  # without a cage it is one piece: kept
    assert (sitk.GetArrayFromImage(kept)[0:3, 10:30, 26:34] == 3).all()
    with pytest.raises(ValueError, match="rib cage mask of shape"):
        postprocess_with_notes(as_image(arr), rib_cage=cage[1:])


def test_segment_applies_the_cage_on_the_input_grid():
    img, truth = ct(DIRECTIONS[1])  # permuted and flipped: the cage is indexed like the image, not the model grid

    class LesionEverywhereDense(torch.nn.Module):
        """Lung where HU is low, lesion on all soft tissue: a segmenter that paints the body as lesion."""

        def forward(self, x):
            lung = (x < 0.3).float()
            return 10 * torch.cat([0 * lung, 0 * lung, 2 * lung, 2 * (1 - lung)], dim=1)

    model = LoadedModel(metadata=meta(roi_size=[32, 32, 32]), module=LesionEverywhereDense(), path=Path("."))
    plain = sitk.GetArrayFromImage(segment(img, None, model, "cpu"))
    cage_arr = np.zeros(truth.shape, np.uint8)
    cage_arr[:, :, : truth.shape[2] // 2] = 1  # half of the image along its array x
    cage = sitk.GetImageFromArray(cage_arr)
    cage.CopyInformation(img)
    notes = Notes()
    caged = sitk.GetArrayFromImage(segment(img, None, model, "cpu", notes, rib_cage=cage))
    assert (plain == 3).sum() > 0 and (plain[cage_arr == 0] == 3).any()
    assert not (caged[cage_arr == 0] == 3).any()
    assert np.array_equal(caged[cage_arr == 1] == 3, plain[cage_arr == 1] == 3)
    assert any("outside the rib cage" in n for n in notes.lines), notes.lines


@pytest.mark.skipif(not NORMAL001.exists(), reason=f"real CT not available: {NORMAL001} (../shared/data absent)")
def test_on_a_real_ct_the_cage_holds_the_lungs_and_not_the_abdomen():
    image = sitk.ReadImage(str(NORMAL001))  # covers the upper abdomen, where the demo segmenter painted "lesion"
    lungs = sitk.GetArrayFromImage(segment_lungs(image)) > 0
    bounds = lesion_bounds(image, segment_lungs(image))
    cage = sitk.GetArrayFromImage(bounds.rib_cage) > 0
    below = sitk.GetArrayFromImage(bounds.below_diaphragm) > 0
    body = sitk.GetArrayFromImage(image) > -500
    on_lung = lungs.any(axis=(1, 2))  # NIfTI z = S-I here (identity direction)
    assert (cage & lungs).sum() >= 0.99 * lungs.sum()
    assert 0.1 < (cage & body)[on_lung].sum() / body[on_lung].sum() < 0.5  # measured 0.25
    assert not cage[~on_lung].any() and (~on_lung).sum() > 10  # the abdominal slices below the lungs
    assert (below & lungs).sum() <= 0.01 * lungs.sum()
    first_lung = int(np.nonzero(on_lung)[0].min())
    assert below[:first_lung][body[:first_lung]].mean() > 0.9  # the abdomen under the lowest lung slice


def test_lesion_pieces_mostly_below_the_diaphragm_go_and_straddling_ones_stay():
    # Catches: the voxel rule instead of the piece rule (a basal lesion cut), the share compared the wrong way,
    # pieces below never removed, or no note.
    arr = labelled(2, 1)  # lungs at array x 5:25 and 35:57, y 8:32, z 3:17
    below = np.zeros(arr.shape, bool)
    below[:6] = True  # the diaphragm at z = 6
    arr[3:5, 12:20, 40:50] = 3  # a dome "lesion": wholly below
    arr[4:12, 12:20, 10:20] = 3  # a basal lesion: 2 of its 8 slices below
    out, notes = postprocess_with_notes(as_image(arr), lesion_margin_mm=4.0, below_diaphragm=below)
    out = sitk.GetArrayFromImage(out)
    assert not (out[3:5, 12:20, 40:50] == 3).any()
    assert (out[4:12, 12:20, 10:20] == 3).all()  # kept whole, its part below included
    assert np.array_equal(np.isin(out, (1, 2)), np.isin(arr, (1, 2)))  # lungs untouched
    removed = 2 * 8 * 10 * 1.5 * 1.5 * 2.5 / 1000
    assert any(f"removed {removed:.1f} mL of lesion in 1 piece(s) lying mostly below the diaphragm" in n
               for n in notes), notes
    with pytest.raises(ValueError, match="below-diaphragm mask of shape"):
        postprocess_with_notes(as_image(arr), below_diaphragm=below[1:])
