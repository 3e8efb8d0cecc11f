"""Interactive correction core: guidance maps, the ROI, the merge rule, clicks and markups, the simulated
user, and one click end to end with an (untrained) interactive network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CovidCTAnalysisLib.constants import LEFT_LUNG, LESION, RIGHT_LUNG
from CovidCTAnalysisLib.errors import InputError, ModelError
from CovidCTAnalysisLib.interactive.clicks import Click, check_clicks, parse_point, read_markups
from CovidCTAnalysisLib.interactive.guidance import grid_index, guidance_maps, network_input
from CovidCTAnalysisLib.interactive.merge import merge_lesion
from CovidCTAnalysisLib.interactive.refine import Refiner, refine
from CovidCTAnalysisLib.interactive.roi import roi_box
from CovidCTAnalysisLib.interactive.simulate import largest_region_centre, next_click
from CovidCTAnalysisLib.models.folder import LoadedModel, load_model_folder, save_model_folder
from CovidCTAnalysisLib.models.interactive_settings import interactive_settings
from CovidCTAnalysisLib.models.metadata import ModelMetadata
from CovidCTAnalysisLib.models.networks import build_interactive
from CovidCTAnalysisLib.models.transforms import model_grid, segmenter_preprocess

PREP = {"spacing_mm": [4.0, 4.0, 4.0], "roi_size": [16, 16, 16], "hu_range": [-1024, 400],
        "guidance_sigma_mm": 6.0, "channels": ["image", "positive", "negative"]}


def image(size=(40, 36, 30), spacing=(2.0, 2.0, 3.0), direction=None, value=-850.0) -> sitk.Image:
    img = sitk.Image(size, sitk.sitkFloat32) + value
    img.SetSpacing(spacing)
    img.SetOrigin((-30.0, 10.0, -200.0))
    if direction is not None:
        img.SetDirection(direction)
    return img


def chest_labels(size=(40, 36, 30)) -> np.ndarray:
    """Body 0 around, right lung (2) in the patient's right half (low x), left lung (1) high x, a lesion."""
    lab = np.zeros(size[::-1], np.uint8)
    lab[4:-4, 6:-6, 4:18] = RIGHT_LUNG
    lab[4:-4, 6:-6, 22:-4] = LEFT_LUNG
    lab[10:16, 12:18, 24:30] = LESION
    return lab


def metadata(prep=PREP, **extra) -> dict:
    return {"id": "test-interactive", "version": "0.0.1", "task": "interactive", "sha256": "0" * 64,
            "architecture": {"name": "monai.UNet", "kwargs": {"in_channels": len(prep["channels"]),
                                                             "channels": [4, 8], "strides": [2]}},
            "trained_on": "nothing (test)", "intended_use": "Research use, not for diagnosis.",
            "preprocessing": prep, "labels": {"0": "background", "1": "Lesion"}, "eval_metrics": {},
            "demo": True, "click_simulation": {"initial": "truth"}, **extra}


def loaded(prep=PREP, module=None) -> LoadedModel:
    meta = ModelMetadata(metadata(prep))
    torch.manual_seed(0)
    module = module or build_interactive(in_channels=len(prep["channels"]), channels=(4, 8), strides=(2,))
    return LoadedModel(metadata=meta, module=module.eval(), path=None)


# --- guidance ---------------------------------------------------------------------------------------------------
def test_guidance_peaks_at_the_clicks_follows_sigma_per_axis_and_drops_clicks_outside():
    maps = guidance_maps((20, 30, 40), positive=[(5, 10, 15)], negative=[(25, 3, 3), (-1, 0, 0)],
                         sigma_zyx=(1.0, 2.0, 4.0))
    assert maps.shape == (2, 20, 30, 40)
    assert np.unravel_index(np.argmax(maps[0]), maps[0].shape) == (5, 10, 15)
    assert maps[0].max() == pytest.approx(1.0)
    assert not maps[1].any(), "a click outside the array must be dropped, not clamped onto the border"
    # wider along x (sigma 4) than along z (sigma 1): half a peak 4 voxels away along x, ~0 along z
    assert maps[0][5, 10, 19] > 0.5 > maps[0][9, 10, 15]


def test_clicks_land_on_the_model_grid_voxel_they_are_in():
    img = image(direction=(0, 1, 0, -1, 0, 0, 0, 0, 1))  # a rotated scan: the model grid is still LPS-aligned
    grid = model_grid(img, (4.0, 4.0, 4.0))
    point = img.TransformIndexToPhysicalPoint((7, 20, 11))
    z, y, x = grid_index(grid, point)
    centre = np.array(grid.TransformIndexToPhysicalPoint((x, y, z)))
    assert np.all(np.abs(centre - np.array(point)) <= 2.0 + 1e-6)


def test_network_input_channels_follow_the_metadata():
    img01 = np.zeros((8, 9, 10), np.float32)
    x3 = network_input(img01, [(4, 4, 4)], [], PREP)
    assert x3.shape == (3, 8, 9, 10) and x3[1].max() == 1.0 and not x3[2].any()
    prep4 = {**PREP, "channels": ["image", "positive", "negative", "lesion"]}
    lesion = np.zeros_like(img01, dtype=np.uint8)
    lesion[1, 2, 3] = 1
    x4 = network_input(img01, [], [(4, 4, 4)], prep4, lesion)
    assert x4.shape == (4, 8, 9, 10) and x4[3, 1, 2, 3] == 1.0 and x4[2].max() == 1.0
    with pytest.raises(ValueError, match="lesion"):
        network_input(img01, [], [], prep4)


def test_interactive_settings_refuse_bad_values():
    assert interactive_settings(PREP)["guidance_sigma_mm"] == 6.0
    with pytest.raises(ModelError, match="guidance_sigma_mm"):
        interactive_settings({**PREP, "guidance_sigma_mm": 0})
    with pytest.raises(ModelError, match="channels"):
        interactive_settings({**PREP, "channels": ["image", "negative", "positive"]})


# --- the two MONAI traps ----------------------------------------------------------------------------------------
def test_a_click_near_the_top_of_a_300_slice_scan_lies_in_its_roi_unlike_monai_spatialcropguidanced():
    from monai.apps.deepgrow.transforms import SpatialCropGuidanced

    img = image(size=(64, 64, 300), spacing=(1.5, 1.5, 1.5))
    top = (32, 30, 295)
    box = roi_box(img, [img.TransformIndexToPhysicalPoint(top)], roi_mm=(48.0, 48.0, 48.0))
    x0, y0, z0, x1, y1, z1 = box
    assert z0 <= top[2] < z1 and x0 <= top[0] < x1 and y0 <= top[1] < y1
    assert (x1 - x0, y1 - y0, z1 - z0) == (32, 32, 32) and z1 == 300, "shifted inwards, size kept"
    # MONAI puts a 3-D crop's depth at the first spatial_size[0] slices, whatever the click (when the clicks'
    # box plus its margin of 20 is smaller than spatial_size)
    d = SpatialCropGuidanced(keys=["image"], guidance="guidance", spatial_size=[64, 64, 64])(
        {"image": np.zeros((1, 300, 96, 96), np.float32), "image_meta_dict": {}, "guidance": [[[295, 30, 32]], []]})
    start, end = d["image_meta_dict"]["foreground_start_coord"], d["image_meta_dict"]["foreground_end_coord"]
    assert not start[0] <= 295 < end[0]


def test_every_axis_is_resampled_unlike_monai_spacingd_before_a_channel_exists():
    from monai.data import MetaTensor
    from monai.transforms import Spacingd

    arr = MetaTensor(torch.zeros(300, 64, 64), affine=torch.diag(torch.tensor([1.5, 0.7, 0.7, 1.0],
                                                                              dtype=torch.float64)))
    monai_out = Spacingd(keys=["image"], pixdim=(3.0, 3.0, 3.0))({"image": arr})["image"]
    assert monai_out.shape[0] == 300, "MONAI took the slice axis for a channel and left it alone"
    ours = segmenter_preprocess(image(size=(64, 64, 300), spacing=(0.7, 0.7, 1.5)),
                                {**PREP, "spacing_mm": [3.0, 3.0, 3.0]})
    assert ours.image.shape == (150, 15, 15)  # 450 mm / 3, 44.8 mm / 3


def test_roi_holds_every_click_and_stays_in_the_image():
    img = image()
    pts = [img.TransformIndexToPhysicalPoint(i) for i in ((0, 0, 0), (39, 35, 29))]
    x0, y0, z0, x1, y1, z1 = roi_box(img, pts, roi_mm=(10.0, 10.0, 10.0))
    assert (x0, y0, z0, x1, y1, z1) == (0, 0, 0, 40, 36, 30)


# --- merge rule -------------------------------------------------------------------------------------------------
def test_merge_changes_only_the_lesion_inside_the_roi_and_the_lungs():
    rng = np.random.default_rng(0)
    labels = chest_labels()
    labels[0, 0, 0] = 7  # a value we do not know must survive too
    before = labels.copy()
    box = (20, 8, 8, 34, 30, 20)  # x0, y0, z0, x1, y1, z1
    proposal = rng.random((12, 22, 14)) > 0.5
    changed = merge_lesion(labels, proposal, box)
    inside = np.zeros(labels.shape, bool)
    inside[8:20, 8:30, 20:34] = True
    lungs = np.isin(before, (1, 2, 3))
    assert np.array_equal(labels[~inside], before[~inside]), "outside the ROI nothing changes"
    assert np.array_equal(labels[~lungs], before[~lungs]), "outside the lungs nothing changes"
    sub, was = labels[8:20, 8:30, 20:34], before[8:20, 8:30, 20:34]
    in_lung = np.isin(was, (1, 2, 3))
    assert np.array_equal(sub[in_lung] == LESION, proposal[in_lung])
    assert changed == int((sub != was).sum()) > 0
    # a voxel that stops being lesion goes back to the lung it lies in (here all lesion was in the left lung)
    assert set(np.unique(sub[(was == LESION) & ~proposal]).tolist()) <= {LEFT_LUNG}


def test_removed_lesion_goes_to_the_nearest_lung_side():
    labels = chest_labels()
    labels[10:16, 12:18, 10:16] = LESION  # a lesion in the right lung too
    merge_lesion(labels, np.zeros((30, 36, 40), bool), (0, 0, 0, 40, 36, 30))
    assert (labels[10:16, 12:18, 10:16] == RIGHT_LUNG).all() and (labels[10:16, 12:18, 24:30] == LEFT_LUNG).all()
    assert not (labels == LESION).any()


# --- clicks and markups -----------------------------------------------------------------------------------------
def markups(path, system="LPS", points=((1.0, 2.0, 3.0, "defined"),), kind="Fiducial"):
    doc = {"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                      "Schema/markups-schema-v1.0.3.json#",
           "markups": [{"type": kind, "coordinateSystem": system, "coordinateUnits": "mm",
                        "controlPoints": [{"id": str(i), "label": f"F-{i}", "position": list(p[:3]),
                                           "positionStatus": p[3]} for i, p in enumerate(points)]}]}
    path.write_text(json.dumps(doc))
    return path


def test_markups_in_ras_become_lps_and_only_defined_points_count(tmp_path):
    pts = ((10.0, -20.0, 30.0, "defined"), (1.0, 1.0, 1.0, "preview"), (5.0, 6.0, 7.0, "undefined"))
    ras = read_markups(markups(tmp_path / "a.mrk.json", "RAS", pts), "add")
    lps = read_markups(markups(tmp_path / "b.mrk.json", "LPS", pts), "remove")
    assert [c.lps for c in ras] == [(-10.0, 20.0, 30.0)] and ras[0].positive
    assert [c.lps for c in lps] == [(10.0, -20.0, 30.0)] and not lps[0].positive
    assert ras[0].source == "a.mrk.json:F-0"


@pytest.mark.parametrize("bad, match", [
    ("not json", "not valid JSON"),
    (json.dumps({"markups": []}), "no 'markups' list"),
    (json.dumps({"markups": [{"type": "Line", "coordinateSystem": "LPS", "controlPoints": []}]}), "type 'Fiducial'"),
    (json.dumps({"markups": [{"type": "Fiducial", "controlPoints": []}]}), "coordinateSystem"),
    (json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "LPS",
                              "controlPoints": [{"position": [1, 2], "positionStatus": "defined"}]}]}), "position"),
])
def test_invalid_markups_are_refused(tmp_path, bad, match):
    path = tmp_path / "bad.mrk.json"
    path.write_text(bad)
    with pytest.raises(InputError, match=match):
        read_markups(path, "add")
    with pytest.raises(InputError, match="does not exist"):
        read_markups(tmp_path / "missing.mrk.json", "add")


def test_points_parse_and_bad_points_are_refused():
    assert parse_point("1.5,-2,3", "add", 1).lps == (1.5, -2.0, 3.0)
    for bad in ("1,2", "a,b,c", "1,2,nan"):
        with pytest.raises(InputError, match="--add-point"):
            parse_point(bad, "add", 1)


def test_clicks_outside_the_image_or_positive_outside_the_lungs_are_refused():
    img, labels = image(), chest_labels()
    lung = Click("add", img.TransformIndexToPhysicalPoint((10, 18, 15)), "--add-point #1")
    body = Click("add", img.TransformIndexToPhysicalPoint((1, 1, 1)), "--add-point #2")
    far = Click("remove", (500.0, 0.0, 0.0), "--remove-point #1")
    check_clicks(img, labels, [lung, Click("remove", body.lps, "--remove-point #2")])  # removing anywhere is fine
    with pytest.raises(InputError, match=r"add click --add-point #2 at LPS .* outside the lungs"):
        check_clicks(img, labels, [lung, body])
    with pytest.raises(InputError, match=r"--remove-point #1 at LPS \(500.0, 0.0, 0.0\) mm lies outside the image"):
        check_clicks(img, labels, [far])


# --- simulated user ---------------------------------------------------------------------------------------------
def test_simulated_user_clicks_the_centre_of_the_largest_error():
    truth = np.zeros((20, 20, 20), bool)
    truth[2:9, 2:9, 2:9] = True  # 343 voxels, centre (5, 5, 5)
    truth[12:15, 12:15, 12:15] = True
    assert largest_region_centre(truth) == ((5, 5, 5), 343)
    assert next_click(np.zeros_like(truth), truth) == (True, (5, 5, 5))
    pred = truth.copy()
    pred[10:20, 0:10, 10:20] = True  # a false positive bigger than any miss
    positive, where = next_click(pred, truth)
    assert not positive and pred[where] and not truth[where]
    assert next_click(truth, truth) is None


# --- one click end to end ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [["image", "positive", "negative"], ["image", "positive", "negative", "lesion"]])
def test_a_click_changes_only_the_lesion_in_its_roi(channels):
    prep = {**PREP, "channels": channels}
    img = image(direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
    labels = chest_labels()
    lab_img = sitk.GetImageFromArray(labels)
    lab_img.CopyInformation(img)
    click = Click("add", img.TransformIndexToPhysicalPoint((10, 18, 15)), "--add-point #1")

    class Everywhere(torch.nn.Module):  # says "lesion" everywhere: the merge rule alone limits the change
        def forward(self, x):
            return torch.stack([torch.zeros_like(x[:, 0]), torch.ones_like(x[:, 0])], dim=1)

    out, steps = refine(img, lab_img, [click], loaded(prep, Everywhere()))
    new = sitk.GetArrayFromImage(out)
    x0, y0, z0, x1, y1, z1 = steps[0].box
    inside = np.zeros(labels.shape, bool)
    inside[z0:z1, y0:y1, x0:x1] = True
    lungs = np.isin(labels, (1, 2, 3))
    assert np.array_equal(new[~inside | ~lungs], labels[~inside | ~lungs])
    clicked_lung = labels[15, 18, 10]
    assert clicked_lung == RIGHT_LUNG
    assert (new[inside & (labels == clicked_lung)] == LESION).all()  # the piece at the click: its lung in the ROI
    assert np.array_equal(new[labels == LEFT_LUNG], labels[labels == LEFT_LUNG])  # the default rule: only that piece
    assert steps[0].changed_voxels == int((new != labels).sum()) > 0
    assert out.GetDirection() == img.GetDirection() and out.GetOrigin() == img.GetOrigin()
    # and a real (untrained) network runs through the same path
    out2, _ = refine(img, lab_img, [click], loaded(prep))
    assert out2.GetSize() == img.GetSize()


def test_refiner_refuses_a_segmentation_model_and_checks_before_changing_anything():
    img, labels = image(), chest_labels()
    lab_img = sitk.GetImageFromArray(labels)
    lab_img.CopyInformation(img)
    seg = LoadedModel(ModelMetadata({**metadata(), "task": "segmentation"}), torch.nn.Identity(), None)
    with pytest.raises(ModelError, match="interactive model"):
        Refiner(img, lab_img, seg)
    good = Click("add", img.TransformIndexToPhysicalPoint((10, 18, 15)), "a")
    with pytest.raises(InputError, match="outside the image"):
        refine(img, lab_img, [good, Click("add", (900.0, 0.0, 0.0), "b")], loaded())


def test_an_interactive_model_folder_saves_and_loads(tmp_path):
    module = build_interactive(in_channels=3, channels=(4, 8), strides=(2,))
    meta = save_model_folder(module, {k: v for k, v in metadata().items() if k != "sha256"}, tmp_path / "m")
    assert meta.task == "interactive"
    back = load_model_folder(tmp_path / "m")
    assert back.metadata.task == "interactive"
    assert tuple(back.module(torch.zeros(1, 3, 8, 8, 8)).shape) == (1, 2, 8, 8, 8)
    with pytest.raises(ModelError, match="click_simulation"):
        save_model_folder(module, {k: v for k, v in metadata().items() if k not in ("sha256", "click_simulation")},
                          tmp_path / "m2")


def test_click_kind_rule_lets_an_add_click_only_add_and_a_remove_click_only_remove():
    base = chest_labels()
    proposal = np.zeros((30, 36, 40), bool)
    proposal[8:12, 8:12, 8:12] = True  # new lesion in the right lung; the old lesion (left lung) not proposed
    added, removed = base.copy(), base.copy()
    merge_lesion(added, proposal, (0, 0, 0, 40, 36, 30), only="add")
    merge_lesion(removed, proposal, (0, 0, 0, 40, 36, 30), only="remove")
    assert (added[base == LESION] == LESION).all() and (added[8:12, 8:12, 8:12] == LESION).all()
    assert not (removed == LESION).any() and np.array_equal(removed[8:12, 8:12, 8:12], base[8:12, 8:12, 8:12])


def test_click_region_rule_applies_only_the_piece_at_the_click():
    base = chest_labels()
    proposal = np.zeros((30, 36, 40), bool)
    proposal[8:12, 8:12, 8:12] = True  # two new pieces in the right lung, apart from each other
    proposal[20:24, 20:24, 8:12] = True
    proposal[10:16, 12:18, 24:30] = True  # the old lesion, kept
    box = (0, 0, 0, 40, 36, 30)
    at_first = base.copy()
    merge_lesion(at_first, proposal, box, only="add", at_zyx=(9, 9, 9))
    assert (at_first[8:12, 8:12, 8:12] == LESION).all() and not (at_first[20:24, 20:24, 8:12] == LESION).any()
    near = base.copy()  # a click 2 voxels beside the piece, within the reach: that piece
    merge_lesion(near, proposal, box, only="add", at_zyx=(21, 21, 14), reach_voxels=(3, 3, 3))
    assert (near[20:24, 20:24, 8:12] == LESION).all() and not (near[8:12, 8:12, 8:12] == LESION).any()
    far = base.copy()  # nothing within reach: nothing changes
    assert merge_lesion(far, proposal, box, only="add", at_zyx=(2, 2, 2), reach_voxels=(1, 1, 1)) == 0
    assert np.array_equal(far, base)
    two = base.copy()  # a second lesion; the remove click on the first takes only the first
    two[20:24, 20:24, 26:30] = LESION
    merge_lesion(two, np.zeros_like(proposal), box, only="remove", at_zyx=(12, 14, 26))
    assert not (two[10:16, 12:18, 24:30] == LESION).any() and (two[20:24, 20:24, 26:30] == LESION).all()


def test_refiner_rule_follows_the_click_kind():
    img, labels = image(), chest_labels()
    lab_img = sitk.GetImageFromArray(labels)
    lab_img.CopyInformation(img)

    class Nowhere(torch.nn.Module):  # says "no lesion" everywhere
        def forward(self, x):
            return torch.stack([torch.ones_like(x[:, 0]), torch.zeros_like(x[:, 0])], dim=1)

    add = Click("add", img.TransformIndexToPhysicalPoint((27, 15, 13)), "a")  # on the lesion
    kept, _ = refine(img, lab_img, [add], loaded(module=Nowhere()))
    assert np.array_equal(sitk.GetArrayFromImage(kept), labels), "an add click never removes lesion"
    redrawn = Refiner(img, lab_img, loaded(module=Nowhere()), rule="redraw")
    redrawn.click(add)
    assert not (redrawn.labels == LESION).any()
    with pytest.raises(ValueError, match="rule"):
        Refiner(img, lab_img, loaded(), rule="bogus")


def test_a_click_runs_its_network_on_one_torch_thread_and_restores_the_count():
    img, labels = image(), chest_labels()
    lab_img = sitk.GetImageFromArray(labels)
    lab_img.CopyInformation(img)
    seen = []

    class Counting(torch.nn.Module):  # records the thread count the network runs with
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return torch.stack([torch.ones_like(x[:, 0]), torch.zeros_like(x[:, 0])], dim=1)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        Refiner(img, lab_img, loaded(module=Counting())).click(
            Click("add", img.TransformIndexToPhysicalPoint((27, 15, 13)), "a"))
        assert seen and set(seen) == {1}  # two threads took 1.06 s a click against 0.06 s (bench_refine)
        assert torch.get_num_threads() == 2, "the caller's thread count comes back"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("edges", [True, False])
def test_a_clicks_redrawn_piece_snaps_its_edges_unless_the_model_says_not_to(edges):
    # Catches: the interactive model's preprocessing.lesion_edges ignored by Refiner.click.
    labels = np.zeros((30, 48, 64), np.uint8)  # (z, y, x) at (2, 1, 1) mm
    labels[2:-2, 4:-4, 4:31] = RIGHT_LUNG
    labels[2:-2, 4:-4, 33:-4] = LEFT_LUNG
    zz, yy, xx = np.indices(labels.shape, dtype=float)
    rho = np.sqrt(((zz - 15) * 2.0) ** 2 + (yy - 24) ** 2 + (xx - 46) ** 2)
    weight = np.clip((12.0 - rho) / 4.0, 0.0, 1.0)  # lung blending into a -450 HU ball, half-way at 10 mm
    hu = np.where(labels > 0, -850.0 + 400.0 * weight, 40.0).astype(np.float32)
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((1.0, 1.0, 2.0))
    lab_img = sitk.GetImageFromArray(labels)
    lab_img.CopyInformation(img)

    class Core(torch.nn.Module):  # lesion above -500 HU: inside the half-way outline, as a coarse network draws it
        def forward(self, x):
            core = (x[:, 0] * 1424.0 - 1024.0 > -500.0).float()
            return 10 * torch.stack([1 - core, core], dim=1)

    prep = {**PREP, "spacing_mm": [2.0, 2.0, 2.0], "lesion_edges": edges}
    refiner = Refiner(img, lab_img, loaded(prep, module=Core()))
    refiner.click(Click("add", img.TransformIndexToPhysicalPoint((46, 24, 15)), "a"))
    lesion = refiner.labels == LESION
    half_way = rho < 10.0
    dice = 2.0 * (lesion & half_way).sum() / (lesion.sum() + half_way.sum())
    assert lesion.any()
    assert (dice > 0.9) if edges else (lesion.sum() < 0.8 * half_way.sum())
