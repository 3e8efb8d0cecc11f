"""A DEMO model's results say what it learned from: phantoms only, or also synthetic lesions in real lesion-free
CTs (``models/metadata.demo_tag``), in the label line, report.json, the preview title, the DICOM SEG and the
cohort report; a model that is not DEMO gets no tag."""

from __future__ import annotations

import pytest
from CovidCTAnalysisLib.cohort.report_html import build_html
from CovidCTAnalysisLib.models.metadata import ModelMetadata, demo_tag
from CovidCTAnalysisLib.results import report
from CovidCTAnalysisLib.results.dicom_seg import _algorithm_identification, _content_description


def _meta(demo: bool, real_patients: list[str] | None) -> ModelMetadata:
    raw = {"id": "seg-demo", "version": "1.0.0", "task": "segmentation", "sha256": "a" * 64, "demo": demo,
           "architecture": {"name": "monai.UNet", "kwargs": {}}, "trained_on": "test", "eval_metrics": {},
           "intended_use": "Research use, not for diagnosis.", "labels": {}, "preprocessing": {}}
    if real_patients is not None:
        raw["training_data"] = {"mix": {"parts": ["phantoms", "hybrids", "weak"], "real_patients": real_patients}}
    return ModelMetadata(raw=raw)


@pytest.mark.parametrize(("real", "long", "short"), [
    (None, "DEMO: trained on synthetic phantoms", "DEMO: synthetic phantoms"),
    ([], "DEMO: trained on synthetic phantoms", "DEMO: synthetic phantoms"),
    (["P001", "cap001", "normal001"], "DEMO: trained on synthetic phantoms and synthetic lesions in 3 real CTs",
     "DEMO: synthetic lesions"),
])
def test_every_output_words_the_tag_after_what_the_model_saw(real, long, short):
    meta = _meta(True, real)
    prov = meta.provenance()
    assert demo_tag(meta.raw) == demo_tag(prov) == prov["demo_tag"] == long
    assert demo_tag(prov, short=True) == short
    assert meta.label_line().endswith(f"[{long}]")
    assert report.demo_warning([prov]) == f"{long}: results are for demonstration only."
    rep = {"classification": {"ran": False}, "method": "model", "models": [prov],
           "statistics": {"lesion_percent": {"left": 1.0, "right": 2.0, "total": 1.5}}}
    assert report.title_lines(rep)[-1] == long
    assert _algorithm_identification([prov])[0].AlgorithmName == f"seg-demo [{short}]"
    description = _content_description([prov])
    assert description == f"DEMO model ({short.split(': ')[1]}); research use, not for diagnosis"
    assert len(description) <= 64  # DICOM LO
    html = build_html([], {"models": [prov], "settings": {"method": "model"}})
    assert long in html


def test_a_model_that_is_not_demo_gets_no_tag_and_a_mixed_result_names_both():
    plain = _meta(False, ["P001"]).provenance()
    assert demo_tag(plain) == "" and report.demo_warning([plain]) is None
    assert _meta(False, None).label_line() == f"seg-demo v1.0.0 (sha256 {'a' * 12})"
    phantoms, hybrid = _meta(True, None).provenance(), _meta(True, ["P001"]).provenance()
    warning = report.demo_warning([phantoms, hybrid, phantoms])
    assert warning == ("DEMO: trained on synthetic phantoms; DEMO: trained on synthetic phantoms and synthetic "
                       "lesions in 1 real CT: results are for demonstration only.")
    assert _content_description([phantoms, hybrid]).startswith("DEMO model (synthetic lesions)")
