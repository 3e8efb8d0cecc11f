"""CovidCTAnalysisLib: the Slicer-free core of CovidCTAnalysis.

Everything that computes lives here: loading and checks, phantoms, the
threshold method, networks, inference, statistics, outputs, DICOM SEG, the
model registry and the ``covidct`` CLI. It never imports ``slicer``, ``qt`` or
``ctk`` (a test enforces this), so it runs in plain Python and in the
``PythonSlicer`` subprocess alike.

Research use, not for diagnosis.
"""

__version__ = "0.1.0"

INTENDED_USE = "Research use, not for diagnosis."
