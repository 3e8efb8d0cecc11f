"""What ``covidct models list`` and ``covidct models show`` print about a model.

``list`` gives one line per model: id@version, task, DEMO or not, and the headline of its
recorded evaluation (accuracy and macro AUC for a classifier; Dice mean ± SD per label for a
segmenter). ``show`` prints the metadata a user needs to judge a model, down to every evaluation
case. Both read ``metadata.json`` only (no torch).
"""

from __future__ import annotations

import json
from typing import Any

from CovidCTAnalysisLib.models.metadata import ModelMetadata, demo_tag


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def _in_label_order(meta: ModelMetadata, items: dict) -> list[tuple[str, Any]]:
    """``items`` (label name -> value) in the model's label order (Left lung, Right lung, Lesion), not the
    alphabetical order metadata.json is written in."""
    labels = meta.labels
    names = [str(v) for _, v in sorted(labels.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0)] \
        if isinstance(labels, dict) else [str(v) for v in labels or []]
    return sorted(items.items(), key=lambda kv: names.index(kv[0]) if kv[0] in names else len(names))


def headline(meta: ModelMetadata) -> str:
    """The recorded evaluation in a few words, or why there is none."""
    m = meta.eval_metrics
    if not m:
        return "no evaluation recorded"
    if "status" in m and len(m) == 1:
        return "not evaluated (run `covidct evaluate --model-dir <model folder> ...` before installing)"
    where = " on held-out cases" if m.get("held_out_only") else ""
    if meta.task == "classification" and "accuracy" in m:
        return f"accuracy {_num(m.get('accuracy'))}, AUC {_num(m.get('macro_auc'))} ({m.get('n', '?')} patients{where})"
    per_class = m.get("per_class")
    if meta.task != "classification" and isinstance(per_class, dict) and per_class:
        dice = ", ".join(f"{name} {_num(v.get('dice_mean'))} ± {_num(v.get('dice_std'))}"
                         for name, v in _in_label_order(meta, per_class) if isinstance(v, dict))
        return f"Dice {dice} ({m.get('n_cases', '?')} cases{where})"
    # metrics in another shape (hand-written metadata): the plain numbers only, never nested dicts
    flat = [f"{k} {_num(v)}" for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ", ".join(flat[:4]) or "no headline metrics recorded"


def list_line(meta: ModelMetadata, width: int) -> str:
    """One line of ``covidct models list``."""
    spec = f"{meta.id}@{meta.version}"
    return f"  {spec:<{width}}  {meta.task:<14}  {'DEMO' if meta.demo else '-':<4}  {headline(meta)}"


def _case_line(case: dict, meta: ModelMetadata, class_names: list[str]) -> str:
    task = meta.task
    if task == "classification":
        probs = case.get("probabilities")
        mark = "ok  " if case.get("true") == case.get("predicted") else "MISS"
        if probs and len(probs) == len(class_names):
            probs = [f"{name} {_num(p, 2)}" for name, p in zip(class_names, probs, strict=True)]
        return (f"    {mark} {case.get('patient_id')}: true {case.get('true')}, predicted {case.get('predicted')}"
                f"{'; p ' + ', '.join(str(p) for p in probs) if probs else ''}"
                f"{', ' + str(case['slices']) + ' slices' if 'slices' in case else ''}")
    parts = []
    for name, v in _in_label_order(meta, case):
        if isinstance(v, dict):
            hd = f", HD95 {_num(v.get('hd95_mm'), 1)} mm" if v.get("hd95_mm") is not None else ""
            parts.append(f"{name} Dice {_num(v.get('dice'))}{hd}")
    return f"    {case.get('case_id', '?')}: " + "; ".join(parts)


def show_text(meta: ModelMetadata, folder: str) -> str:
    """The details of one model, for ``covidct models show``."""
    raw = meta.raw
    lines = [f"{meta.id}@{meta.version}  ({meta.task}){'  ' + demo_tag(raw) if meta.demo else ''}",
             f"  folder:        {folder}",
             f"  sha256:        {meta.sha256}",
             f"  name:          {raw.get('name', '')}",
             f"  architecture:  {json.dumps(raw.get('architecture'))}",
             f"  labels:        {json.dumps(raw.get('labels'))}",
             f"  trained on:    {meta.trained_on}",
             f"  intended use:  {raw.get('intended_use')}",
             f"  preprocessing: {json.dumps(raw.get('preprocessing'))}"]
    for key in ("git_commit", "created_at", "data_source"):
        if raw.get(key):
            lines.append(f"  {key.replace('_', ' ') + ':':<14} {raw[key]}")
    split = (raw.get("training_data") or {}).get("split") or {}
    if split:
        lines.append("  split:         " + ", ".join(f"{k} {len(v)}" for k, v in split.items() if isinstance(v, list)))
    m = meta.eval_metrics
    lines.append(f"  evaluation:    {headline(meta)}")
    dataset = m.get("dataset")
    if isinstance(dataset, dict):
        lines.append(f"    dataset: {json.dumps(dataset)}")
    for key in ("measured_by", "measured_at", "aggregation", "level", "grid"):
        if key in m:
            lines.append(f"    {key.replace('_', ' ')}: {json.dumps(m[key]) if isinstance(m[key], dict) else m[key]}")
    for name, v in _in_label_order(meta, m.get("per_class") or {}):
        if isinstance(v, dict):
            lines.append(f"    {name}: " + ", ".join(f"{k} {_num(x) if isinstance(x, float) else x}"
                                                   for k, x in v.items() if not isinstance(x, (dict, list))))
    cm = m.get("confusion_matrix")
    if isinstance(cm, dict) and cm.get("counts"):
        lines.append(f"    confusion (rows true, columns predicted: {', '.join(cm.get('rows_true_cols_pred', []))}): "
                     + " | ".join(" ".join(str(c) for c in row) for row in cm["counts"]))
    cases = m.get("cases") or []
    if cases:
        lines.append(f"  evaluation cases ({len(cases)}):")
        names = [str(c) for c in meta.labels] if isinstance(meta.labels, list) else []
        lines.extend(_case_line(c, meta, names) for c in cases if isinstance(c, dict))
    other = {k: v for k, v in m.items() if k not in {"dataset", "measured_by", "measured_at", "aggregation", "level",
                                                     "grid", "per_class", "confusion_matrix", "cases"}}
    if other:
        lines.append(f"  other metrics: {json.dumps(other)}")
    return "\n".join(lines)
