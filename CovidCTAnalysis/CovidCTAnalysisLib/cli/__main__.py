"""``python -m CovidCTAnalysisLib.cli``: how the Slicer module runs the CLI in a ``PythonSlicer`` subprocess."""

import sys

from CovidCTAnalysisLib.cli.main import main

sys.exit(main())
