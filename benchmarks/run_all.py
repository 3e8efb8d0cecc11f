"""Run every benchmark module in this folder: ``bench_*.py`` and ``eval_*.py`` that define ``main()``.

``python -m benchmarks.run_all [--only NAME ...]``. Each module writes its own JSON under
``benchmarks/results/``; this runner prints a line per module and exits non-zero if any failed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Module names (``benchmarks.bench_x``) of the benchmark files present, sorted."""
    names = sorted(p.stem for p in HERE.glob("*.py") if p.stem.startswith(("bench_", "eval_")))
    return [f"benchmarks.{n}" for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only these modules (e.g. bench_analysis)")
    args = parser.parse_args(argv)
    modules = discover()
    if args.only:
        modules = [m for m in modules if m.split(".")[-1] in set(args.only)]
    failed = []
    for name in modules:
        mod = importlib.import_module(name)
        if not callable(getattr(mod, "main", None)):
            print(f"== {name}: no main(), skipped", flush=True)
            continue
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            rc = mod.main([]) if _takes_argv(mod.main) else mod.main()
        except SystemExit as e:
            rc = e.code
        except Exception:  # noqa: BLE001 - report every benchmark's failure and go on
            traceback.print_exc()
            rc = 1
        took = time.perf_counter() - t0
        status = "ok" if not rc else f"FAILED ({rc})"
        print(f"== {name}: {status} in {took:.1f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _takes_argv(fn) -> bool:
    import inspect

    try:
        return len(inspect.signature(fn).parameters) >= 1
    except (TypeError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
