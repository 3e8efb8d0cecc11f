"""Tiny fake copies of the public datasets' layouts, written from synthetic phantoms.

Shared by ``test_training_layouts.py`` (each loader, one layout at a time) and
``test_training_recipe.py`` (README's "Train on your own data" commands). ``phantoms`` maps
``(kind, seed)`` to a ``Phantom`` of the core's generator (kinds normal, pneumonia, covid).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

KAGGLE_FOLDERS = {"normal": "NORMAL2_CT", "pneumonia": "PNEUMONIA2_CT", "covid": "COVID2_CT"}
CT_MD_FOLDERS = {"normal": "Normal subjects", "pneumonia": "CAP subjects", "covid": "COVID-19 subjects"}


def write_image(img: sitk.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def gray_png(hu: np.ndarray) -> np.ndarray:
    return (np.clip((hu + 1350.0) / 1500.0, 0, 1) * 255).round().astype(np.uint8)  # a lung window


def write_kaggle_class_folders(root: Path, phantoms: dict, every: int = 6) -> Path:
    """Kaggle "COVID-19 & Normal & Pneumonia CT Images": ``<CLASS>_CT/patient<seed>_<z>.png`` (lung slices)."""
    from PIL import Image

    for (kind, seed), ph in phantoms.items():
        hu = sitk.GetArrayFromImage(ph.image)
        truth = sitk.GetArrayFromImage(ph.truth)
        zs = [z for z in range(hu.shape[0]) if (truth[z] > 0).any()][::every]
        (root / KAGGLE_FOLDERS[kind]).mkdir(parents=True, exist_ok=True)
        for z in zs:
            Image.fromarray(gray_png(hu[z])).save(root / KAGGLE_FOLDERS[kind] / f"patient{seed}_{z}.png")
    return root


def write_covid_ct_md(root: Path, phantoms: dict) -> Path:
    """COVID-CT-MD: class folders of DICOM series, ``Index.csv`` and ``Slice-level-labels.npy`` (upstream order:
    index 0 is the most superior slice, rows padded to 60)."""
    from CovidCTAnalysisLib.phantom.write_dicom import write_dicom_series

    rows, labels = [], []
    for (kind, seed), ph in sorted(phantoms.items()):
        pid = f"{kind[:3]}{seed:03d}"
        write_dicom_series(ph.image, root / CT_MD_FOLDERS[kind] / pid)
        if kind != "normal":
            n_z = ph.image.GetSize()[2]
            lesion_by_z = (sitk.GetArrayFromImage(ph.truth) == 3).reshape(n_z, -1).any(axis=1)
            rows.append([len(rows), "COVID-19" if kind == "covid" else "CAP", f"./{kind}/", pid])
            upstream = np.zeros(60, dtype=np.uint8)
            upstream[:n_z] = lesion_by_z[::-1]  # phantom z runs inferior -> superior
            labels.append(upstream)
    with open(root / "Index.csv", "w", newline="") as f:
        csv.writer(f).writerows([["Label Index", "Diagnosis", "Relative Path", "Folder/ID"], *rows])
    np.save(root / "Slice-level-labels.npy", np.stack(labels))
    return root


def write_covid_ct_seg_zenodo(root: Path, phantoms: dict, seeds, radiopaedia: bool = True) -> Path:
    """COVID-19-CT-Seg (Zenodo): ``COVID-19-CT-Seg_20cases/<case>.nii.gz`` and ``Lung_and_Infection_Mask/``;
    with ``radiopaedia`` the third case is a Radiopaedia one, stored as the dataset does (lung window scaled
    to 0..255)."""
    for i, seed in enumerate(seeds):
        ph = phantoms[("covid", seed)]
        name = f"coronacases_{i + 1:03d}.nii.gz" if i < 2 or not radiopaedia else "radiopaedia_4_85506_1.nii.gz"
        image = ph.image
        if name.startswith("radiopaedia"):
            image = sitk.Cast(sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), lowerBound=-1250, upperBound=250)
                              * (255.0 / 1500.0) + 1250 * 255.0 / 1500.0, sitk.sitkFloat32)
        write_image(image, root / "COVID-19-CT-Seg_20cases" / name)
        write_image(ph.truth, root / "Lung_and_Infection_Mask" / name)
    return root


def write_covid19_20(root: Path, phantoms: dict, seeds) -> Path:
    """COVID-19-20 challenge: ``Train/volume-covid19-A-<n>_ct.nii.gz`` with ``..._seg.nii.gz`` (1 = lesion)."""
    for seed in seeds:
        ph = phantoms[("covid", seed)]
        write_image(ph.image, root / "Train" / f"volume-covid19-A-{seed:04d}_ct.nii.gz")
        write_image(sitk.Cast(ph.truth == 3, sitk.sitkUInt8), root / "Train" / f"volume-covid19-A-{seed:04d}_seg.nii.gz")
    return root
