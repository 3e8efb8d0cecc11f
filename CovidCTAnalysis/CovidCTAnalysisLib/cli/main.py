"""``covidct``: the command line; one subcommand per module of this package.

``main(argv) -> int`` is the one entry point for batch use, CI and the Slicer
subprocess. A ``CovidCTError`` becomes its ``exit_code`` and one line
``error: ...`` on stderr (plus an ``{"event": "error"}`` line with
``--progress json``), never a traceback; the output folder is left as it was.

To add a subcommand, write ``cli/<name>.py`` with ``add_parser(subparsers) -> parser``
and ``run(args) -> int`` (raising ``CovidCTError`` on refusal), add it to
``SUBCOMMANDS`` below and to ``CovidCTAnalysis/CMakeLists.txt``. Import heavy
packages (torch, MONAI) inside ``run``, so that ``covidct --help`` stays quick.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from CovidCTAnalysisLib import INTENDED_USE, __version__
from CovidCTAnalysisLib.cli import analyze, batch, models, phantom, refine
from CovidCTAnalysisLib.cli import training as training_tools
from CovidCTAnalysisLib.errors import CovidCTError
from CovidCTAnalysisLib.results.interrupts import interrupted_exit_code, interrupted_message

# In the order `covidct --help` lists them.
SUBCOMMANDS = (analyze, batch, refine, phantom, models)
# The training package's tools: covidct train|evaluate|export|tune-aggregation (cli/training.py).
SUBCOMMANDS += training_tools.COMMANDS


def build_parser() -> argparse.ArgumentParser:
    """The ``covidct`` argument parser with all subcommands."""
    parser = argparse.ArgumentParser(prog="covidct", description=f"COVID-19 chest CT analysis. {INTENDED_USE}")
    parser.add_argument("--version", action="version", version=f"covidct {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub).set_defaults(_run_subcommand=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``covidct``; returns the exit status (0 success, ``CovidCTError.exit_code`` on refusal)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(list(argv) if argv is not None else None)
    if getattr(args, "forward_args", False):  # a training tool parses its own arguments (cli/training.py)
        args.forwarded = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args._run_subcommand(args) or 0)
    except CovidCTError as e:
        one_line = " ".join(str(e).split())  # one line, whatever the message's own layout
        print(f"error: {one_line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP during analyze (results.interrupts)
        print(f"error: {interrupted_message(e)}", file=sys.stderr)
        return interrupted_exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
