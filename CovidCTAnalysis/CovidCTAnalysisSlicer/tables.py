"""The statistics of ``report.json`` as a table node, and back.

One row per segment (Left lung, Right lung, Lesion): volume in mL, mean and SD
of HU, the lesion percent of that lung (of both lungs on the Lesion row), and
Dice and HD95 against the reference when one was given. The table shows the
report's numbers; nothing is recomputed here.
"""

from __future__ import annotations

import math
from typing import Any

import vtk
from CovidCTAnalysisLib import constants

# (column name, unit label, description, value type)
COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("Segment", "", "Segment name", "string"),
    ("Volume", "mL", "Segment volume in millilitres", "double"),
    ("Mean HU", "HU", "Mean CT value in the segment", "double"),
    ("SD HU", "HU", "Standard deviation of the CT value in the segment", "double"),
    ("Lesion %", "%", "Lesion volume as percent of this lung (of both lungs on the Lesion row)", "double"),
)
REFERENCE_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("Dice", "", "Dice overlap with the reference segmentation", "double"),
    ("HD95", "mm", "95th percentile Hausdorff distance to the reference segmentation", "double"),
)
LESION_PERCENT_KEY = {constants.LEFT_LUNG: "left", constants.RIGHT_LUNG: "right", constants.LESION: "total"}


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _segmentLabel(segment: dict) -> int | None:
    if "label" in segment:
        return int(segment["label"])
    for label, name in constants.LABEL_NAMES.items():
        if segment.get("name") == name:
            return label
    return None


def _referenceMetric(report: dict, segment: dict, keys: tuple[str, ...]) -> float:
    """A Dice/HD95 value for ``segment`` wherever the report keeps it (on the segment or in a mapping)."""
    for key in keys:
        if key in segment and not isinstance(segment[key], dict):
            return _number(segment[key])
    containers = [report.get("reference") or {}, report.get("statistics") or {}, report]
    for container in containers:
        for key in keys:
            mapping = container.get(key) if isinstance(container, dict) else None
            if isinstance(mapping, dict):
                for candidate in (segment.get("name"), str(segment.get("label")), segment.get("label")):
                    if candidate in mapping:
                        return _number(mapping[candidate])
    return math.nan


def statisticsRows(report: dict, withReference: bool | None = None) -> list[dict[str, Any]]:
    """The table's rows as dicts (column name -> value), in label order.

    ``withReference`` None: include the Dice/HD95 columns when the report has them.
    """
    lesionPercent = (report.get("statistics") or {}).get("lesion_percent") or {}
    rows = []
    for segment in sorted(report.get("segments") or [], key=lambda s: _segmentLabel(s) or 99):
        label = _segmentLabel(segment)
        row: dict[str, Any] = {
            "Segment": str(segment.get("name", constants.LABEL_NAMES.get(label, "?"))),
            "Volume": _number(segment.get("volume_ml")),
            "Mean HU": _number(segment.get("mean_hu")),
            "SD HU": _number(segment.get("sd_hu")),
            "Lesion %": _number(lesionPercent.get(LESION_PERCENT_KEY.get(label, ""))),
        }
        row["Dice"] = _referenceMetric(report, segment, ("dice",))
        row["HD95"] = _referenceMetric(report, segment, ("hd95_mm", "hd95"))
        rows.append(row)
    if withReference is None:
        withReference = any(not math.isnan(row["Dice"]) for row in rows)
    if not withReference:
        for row in rows:
            del row["Dice"], row["HD95"]
    return rows


def updateTableNodeFromReport(tableNode, report: dict) -> list[dict[str, Any]]:
    """Fill ``tableNode`` with the report's statistics, replacing whatever it held; returns the rows."""
    rows = statisticsRows(report)
    columns = COLUMNS + (REFERENCE_COLUMNS if rows and "Dice" in rows[0] else ())
    table = vtk.vtkTable()
    for name, _unit, _description, valueType in columns:
        array = vtk.vtkStringArray() if valueType == "string" else vtk.vtkDoubleArray()
        array.SetName(name)
        for row in rows:
            array.InsertNextValue(row[name])
        table.AddColumn(array)
    wasModifying = tableNode.StartModify()
    tableNode.SetAndObserveTable(table)
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    for name, unit, description, _valueType in columns:
        tableNode.SetColumnTitle(name, f"{name} [{unit}]" if unit and unit != "%" else name)
        tableNode.SetColumnUnitLabel(name, unit)
        tableNode.SetColumnDescription(name, description)
    tableNode.SetLocked(True)
    tableNode.EndModify(wasModifying)
    return rows


def rowsFromTableNode(tableNode) -> list[dict[str, Any]]:
    """Read a table node back as a list of row dicts (column name -> value)."""
    table = tableNode.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c, name in enumerate(names):
            value = table.GetValue(r, c)
            row[name] = value.ToString() if name == "Segment" else value.ToDouble()
        rows.append(row)
    return rows
