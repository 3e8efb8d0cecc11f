"""Training, evaluation and export of the CovidCTAnalysis networks.

Installed (the wheel ships this package), the tools run from any folder as ``covidct train
classifier|segmenter``, ``covidct export``, ``covidct tune-aggregation`` and ``covidct evaluate``
(``CovidCTAnalysisLib/cli/training.py`` forwards the arguments). As modules, e.g.
``python -m training.train_classifier --help``,
``python -m training.train_segmenter --help``, ``python -m training.evaluate --help``,
``python -m training.export --help`` and ``python -m training.demo`` (``make demo``).
``torchrun --nproc_per_node N -m training.train_segmenter ...`` trains with DDP.

Everything here builds on the core (``CovidCTAnalysisLib``): the networks come from
``networks.build_classifier`` / ``build_segmenter`` and the preprocessing from
``transforms``, so what is trained is exactly what the core runs.
Research use, not for diagnosis.
"""

import sys
from pathlib import Path

# Running from a checkout without `pip install -e .`: make the core importable.
_CORE_PARENT = Path(__file__).resolve().parents[1] / "CovidCTAnalysis"
if _CORE_PARENT.is_dir() and str(_CORE_PARENT) not in sys.path:
    try:
        import CovidCTAnalysisLib  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(_CORE_PARENT))
