"""``import slicer`` for the MRML tests: skip locally when the slicer-core wheel is missing, fail under CI=true.

``pytest.importorskip("slicer")`` would silently skip every MRML test if the wheel broke in CI; the rule is the
one the DICOM validators follow (``dicom_validators.missing_tool``): a missing tool is a failure in CI.
"""

from __future__ import annotations

import pytest
from dicom_validators import in_ci

REASON = "the slicer-core wheel (real MRML libraries) is not installed"


def requireSlicer():
    """The ``slicer`` module, else skip (locally) or fail (``CI=true``), at import time of the test module."""
    try:
        import slicer
    except ImportError as e:
        if in_ci():
            pytest.fail(f"{REASON} ({e}); CI=true: the [dev] extra installs slicer-core", pytrace=False)
        pytest.skip(f"{REASON} ({e})", allow_module_level=True)
    return slicer
