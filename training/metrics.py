"""Metrics for training logs and ``evaluate.py`` (MONAI where it has them).

Classifier: accuracy, per-class sensitivity and specificity, confusion matrix, one-vs-rest
AUC (``monai.metrics.compute_roc_auc``). Segmenter: per-class Dice and HD95 per case by the
core's own ``results.statistics.dice``/``hd95_mm`` (what ``covidct analyze --reference`` reports),
summarised as mean ± std as in Ma et al.'s benchmark tables (MeanDice±Std).

Empty masks, one convention everywhere: a label absent from both prediction and truth has no
Dice (None, "undefined"), as MONAI's ``compute_dice`` with its default ``ignore_empty=True`` gives
NaN; HD95 is None when either mask is empty. Means skip cases whose truth lacks the label, as
MONAI's mean reduction skips those NaNs (and as the validation Dice in ``train_segmenter`` does).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[int(t), int(p)] += 1
    return cm


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, per-class sensitivity/specificity/AUC and the confusion matrix."""
    from monai.metrics import compute_roc_auc

    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=int)
    pred = probs.argmax(axis=1)
    n = len(class_names)
    cm = confusion_matrix(y, pred, n)
    per_class = {}
    for k, name in enumerate(class_names):
        tp = cm[k, k]
        fn = cm[k].sum() - tp
        fp = cm[:, k].sum() - tp
        tn = cm.sum() - tp - fn - fp
        auc = None
        if 0 < (y == k).sum() < len(y):
            auc = float(compute_roc_auc(torch.as_tensor(probs[:, k]), torch.as_tensor((y == k).astype(np.float64))))
        per_class[name] = {
            "sensitivity": float(tp / (tp + fn)) if tp + fn else None,
            "specificity": float(tn / (tn + fp)) if tn + fp else None,
            "auc": auc,
            "n": int((y == k).sum()),
        }
    aucs = [v["auc"] for v in per_class.values() if v["auc"] is not None]
    return {
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()) if len(y) else None,
        "per_class": per_class,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "confusion_matrix": {"rows_true_cols_pred": list(class_names), "counts": cm.tolist()},
    }


def confusion_figure(cm: np.ndarray, class_names: Sequence[str], title: str = ""):
    """A matplotlib figure of the confusion matrix, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, fontsize=7)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def dice_hd95(pred: np.ndarray, truth: np.ndarray, labels: Sequence[int], spacing_zyx: Sequence[float]) -> dict:
    """Per-label Dice and HD95 (mm) of one case; (z, y, x) integer arrays on the same grid.

    The core's ``dice``/``hd95_mm``: Dice is None when a label is absent from both, HD95 when
    either is empty (module doc).
    """
    from CovidCTAnalysisLib.results.statistics import dice, hd95_mm

    out = {}
    for lab in labels:
        p, t = pred == lab, truth == lab
        out[int(lab)] = {"dice": dice(p, t), "hd95_mm": hd95_mm(p, t, spacing_zyx),
                         "truth_voxels": int(np.count_nonzero(t))}
    return out


def summarise(per_case: list[dict], label_names: dict[int, str]) -> dict:
    """Mean ± std over cases of Dice and HD95 per label (the paper's MeanDice±Std)."""
    out = {}
    for lab, name in label_names.items():
        dices = [c[lab]["dice"] for c in per_case if lab in c and c[lab]["truth_voxels"] > 0]
        hds = [c[lab]["hd95_mm"] for c in per_case if lab in c and c[lab]["hd95_mm"] is not None]
        out[name] = {
            "dice_mean": float(np.mean(dices)) if dices else None,
            "dice_std": float(np.std(dices)) if dices else None,
            "hd95_mm_mean": float(np.mean(hds)) if hds else None,
            "hd95_mm_std": float(np.std(hds)) if hds else None,
            "n_cases": len(dices),
            "dice_text": f"{100 * np.mean(dices):.1f}±{100 * np.std(dices):.1f}" if dices else "n/a",
        }
    return out
