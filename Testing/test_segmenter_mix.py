"""The segmenter's data mix: hybrid flips/elastic, weak labels with an ignore value, the masked loss,
leave-one-patient-out exclusion, and ``--dataset phantoms,hybrids,weak`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CovidCTAnalysisLib.constants import LESION
from CovidCTAnalysisLib.masks import lung_centroids_x
from CovidCTAnalysisLib.phantom.generator import make_phantom

from training import hybrid_cases as hy
from training import segmenter_mix as smix
from training.real_cases import covid_ct_md_sample
from training.segmenter_data import IGNORE_LABEL


def _image_like(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(like)
    return out


def test_flip_keeps_label_1_on_the_patients_left():
    ph = make_phantom("covid", seed=3, size=(64, 64, 24))
    hu, truth = sitk.GetArrayFromImage(ph.image), sitk.GetArrayFromImage(ph.truth)
    flipped_hu, flipped = hy.flip_left_right(hu, truth)
    left_x, right_x = lung_centroids_x(_image_like(flipped, ph.truth))
    assert left_x > right_x  # LPS +x is the patient's left: label 1 must stay there after the mirror
    assert np.array_equal(flipped_hu, hu[:, :, ::-1])  # the image really was mirrored
    assert (flipped == LESION).sum() == (truth == LESION).sum()


def test_elastic_moves_the_image_and_its_labels_together():
    hu = np.full((20, 48, 48), -850.0, dtype=np.float32)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    hu[6:14, 16:32, 16:32], labels[6:14, 16:32, 16:32] = 0.0, LESION
    out_hu, out_labels = hy.elastic(hu, labels, (2.0, 1.0, 1.0), np.random.default_rng(1), max_mm=4.0)
    assert not np.array_equal(out_labels, labels)  # it did deform
    lesion = out_labels == LESION
    assert 0.7 < lesion.sum() / (labels == LESION).sum() < 1.3
    # the lesion's truth still covers the lesion's HU (bar linear blending at the edge), and nothing else does
    assert np.median(out_hu[lesion]) > -50.0 and np.mean(out_hu[lesion] > -425.0) > 0.9
    assert np.mean(out_hu[~lesion] < -425.0) > 0.97


def test_augment_records_what_it_applied():
    ph = make_phantom("covid", seed=3, size=(48, 48, 16))
    hu, truth = sitk.GetArrayFromImage(ph.image).astype(np.float32), sitk.GetArrayFromImage(ph.truth)
    infos = [hy.augment(hu, truth, ph.image.GetSpacing()[::-1], np.random.default_rng(s))[2] for s in range(8)]
    assert {i["flipped_left_right"] for i in infos} == {True, False}
    assert all(hy.ELASTIC_MAX_MM[0] <= i["elastic_max_mm"] <= hy.ELASTIC_MAX_MM[1] for i in infos)
    assert all({"rotation_deg", "kernel", "thick_slices", "noise_sd_hu"} <= set(i) for i in infos)


def test_weak_label_volume_ignores_exactly_the_infected_slices():
    lungs = np.zeros((6, 8, 8), dtype=np.uint8)
    lungs[:, 2:6, 1:3], lungs[:, 2:6, 5:7] = 2, 1
    slice_labels = [0, 1, 1, 0, 0, 1]
    out = smix.weak_label_volume(lungs, slice_labels)
    for z, infected in enumerate(slice_labels):
        if infected:
            assert (out[z] == IGNORE_LABEL).all()
        else:
            assert np.array_equal(out[z], lungs[z])  # clear slice: lungs, no lesion
    with pytest.raises(ValueError, match="5 slice labels for 6 slices"):
        smix.weak_label_volume(lungs, slice_labels[:5])


def test_masked_loss_ignores_the_ignored_voxels():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 1, 6, 8, 8))
    target[:, :, 2:4] = IGNORE_LABEL
    logits = torch.randn(2, 4, 6, 8, 8, requires_grad=True)
    loss = smix.MaskedDiceCELoss()(logits, target)
    loss.backward()
    ignored = (target == IGNORE_LABEL).expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0)
    assert torch.any(logits.grad[~ignored] != 0)
    changed = logits.detach().clone()
    changed[ignored] += 5.0 * torch.randn(int(ignored.sum()))
    assert torch.isclose(smix.MaskedDiceCELoss()(changed, target), loss.detach())
    changed[~ignored] += 1.0 * torch.randn(int((~ignored).sum()))
    assert not torch.isclose(smix.MaskedDiceCELoss()(changed, target), loss.detach())


def test_unknown_real_patient_is_refused(tmp_path):
    from training import train_segmenter

    with pytest.raises(SystemExit, match="unknown real patient.*P999"):
        train_segmenter.main(["--dataset", "phantoms,weak", "--real-data", str(tmp_path), "--real-exclude", "P999",
                              "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--threads", "1"])


def test_unknown_part_is_refused(tmp_path):
    from training import train_segmenter

    with pytest.raises(SystemExit, match="phantoms,lidc"):
        train_segmenter.main(["--dataset", "phantoms,lidc", "--output-dir", str(tmp_path / "out"), "--device", "cpu"])


@pytest.mark.realdata
def test_real_exclude_leaves_the_patient_out(shared_data, tmp_path):
    backgrounds = hy.real_backgrounds(shared_data, exclude={"P001"})
    assert backgrounds and all(b.patient != "P001" for b in backgrounds)
    weak = smix.weak_seg_cases(shared_data, tmp_path, exclude={"P001", "normal001"})
    assert [c.group for c in weak] == ["real-cap001"]


@pytest.mark.realdata
@pytest.mark.slow
def test_mix_trains_end_to_end_with_real_patients_in_training(shared_data, tmp_path):
    from training import train_segmenter

    out = tmp_path / "run"
    assert train_segmenter.main([
        "--dataset", "phantoms,hybrids,weak", "--real-data", str(shared_data), "--real-exclude", "cap001,normal001",
        "--phantom-kinds", "covid", "--phantom-seeds", "0-2", "--phantom-spacing", "6", "--hybrid-kinds", "covid",
        "--hybrid-seeds", "0", "--output-dir", str(out), "--device", "cpu", "--threads", "1", "--epochs", "1",
        "--spacing", "6", "--roi", "24,24,16", "--batch-size", "2", "--channels", "2,4", "--strides", "2",
        "--num-res-units", "0", "--lesion-crop-ratio", "3", "--train-fraction", "0.67"]) == 0
    run = json.loads((out / "run.json").read_text())
    mix = run["dataset"]["mix"]["parts"]  # the classifier's shape (classifier_mix.mix_summary)
    assert run["dataset"]["mix"]["real_excluded"] == ["cap001", "normal001"]
    assert list(mix) == ["phantoms", "hybrids", "weak"]
    assert mix["weak"]["patients"] == ["real-P001"] and mix["weak"]["cases"] == 1
    assert mix["hybrids"]["patients"] == ["real-P001"] and mix["hybrids"]["version"] == hy.HYBRID_VERSION
    assert mix["weak"]["real_excluded"] == ["cap001", "normal001"]
    assert "weak-P001" in run["split"]["train"] and not any(c.startswith(("weak", "hybrid")) for c in run["split"]["val"])
    assert run["training"]["loss"].startswith("MaskedDiceCELoss")
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "cache" / f"weak_v{smix.WEAK_VERSION}_P001_label.nii.gz")))
    p001 = next(c for c in covid_ct_md_sample(shared_data) if c.patient == "P001")
    assert [int((label[z] == IGNORE_LABEL).all()) for z in range(label.shape[0])] == list(p001.slice_labels)
