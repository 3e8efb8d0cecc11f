"""``covidct models list|show ID[@VER]|install PATH|verify [--models-dir DIR]``.

``list`` prints one line per model (id@version, task, DEMO, headline metrics); ``show`` the details,
down to every evaluation case (``cli/models_text.py``).

``install`` checks the sha256 of the weights against ``metadata.json`` before it
copies, and again on the copy; ``verify`` re-checks every installed model and exits
non-zero (``ModelError.exit_code``) if any fails.
"""

from __future__ import annotations

import argparse
import json
import sys

from CovidCTAnalysisLib.cli.models_text import list_line, show_text
from CovidCTAnalysisLib.errors import CovidCTError, ModelError
from CovidCTAnalysisLib.models.registry import ENV_VAR, ModelRegistry, version_key


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``models`` command (with ``list``, ``show``, ``install``, ``verify``) to ``subparsers``."""
    p = subparsers.add_parser(
        "models", help="list, install and verify models",
        description="Manage the model registry: <models-dir>/<id>/<version>/{metadata.json, model.safetensors}. "
                    f"The folder is --models-dir, else ${ENV_VAR}, else ~/.cache/covidct/models.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", metavar="DIR", default=argparse.SUPPRESS,
                        help=f"model registry folder (default: ${ENV_VAR} or ~/.cache/covidct/models)")
    p.add_argument("--models-dir", metavar="DIR", default=None, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="models_command", metavar="{list,show,install,verify}", required=True)
    sub.add_parser("list", parents=[common], help="one line per installed model: id@version, task, DEMO, metrics")
    show = sub.add_parser("show", parents=[common], help="the details of one model, down to every evaluation case")
    show.add_argument("spec", metavar="ID[@VER]", help="an installed model (without @VER: its highest version)")
    show.add_argument("--json", action="store_true", help="print its metadata.json as installed")
    inst = sub.add_parser("install", parents=[common], help="install a model folder (or a folder of model folders)")
    inst.add_argument("path", metavar="PATH", help="folder with metadata.json and model.safetensors")
    inst.add_argument("--force", action="store_true", help="replace an installed id@version with other weights")
    sub.add_parser("verify", parents=[common], help="re-check the sha256 of every installed model")
    return p


def _find(registry: ModelRegistry, spec: str):
    """The installed model ``ID`` (highest version) or ``ID@VER``; ModelError naming what is installed."""
    mid, _, ver = spec.partition("@")
    models = registry.list()
    same = [m for m in models if m.id == mid and (not ver or m.version == ver)]
    if not same:
        have = ", ".join(f"{m.id}@{m.version}" for m in models) or "none"
        raise ModelError(f"model {spec!r} is not installed in {registry.root} ({registry.origin}); installed: {have}. "
                         "`covidct models list` shows them.")
    return max(same, key=lambda m: version_key(m.version))


def run(args: argparse.Namespace) -> int:
    """Run ``covidct models ...``; returns the exit status."""
    registry = ModelRegistry(getattr(args, "models_dir", None))
    out = sys.stdout
    try:
        if args.models_command == "list":
            models = registry.list()
            print(f"models in {registry.root} ({registry.origin}):", file=out)
            if not models:
                print("  none. Run `make demo` (demo models trained on synthetic phantoms) or "
                      "`covidct models install PATH`.", file=out)
            width = max((len(f"{m.id}@{m.version}") for m in models), default=0)
            for meta in models:
                print(list_line(meta, width), file=out)
            if models:
                print("  (details: covidct models show ID[@VER])", file=out)
            for folder, why in registry.problems():
                print(f"  BROKEN {folder}: {why}", file=out)
            return 0
        if args.models_command == "show":
            meta = _find(registry, args.spec)
            if args.json:
                print(json.dumps(meta.raw, indent=2), file=out)
            else:
                print(show_text(meta, str(registry.folder(meta))), file=out)
            return 0
        if args.models_command == "install":
            for meta in registry.install_all(args.path, force=args.force):
                print(f"installed {meta.label_line()} into {registry.folder(meta)} (sha256 verified)", file=out)
            return 0
        if args.models_command == "verify":
            results = registry.verify()
            problems = registry.problems()
            if not results and not problems:
                print(f"no models installed in {registry.root}", file=out)
            for meta, ok, message in results:
                print(f"{'OK  ' if ok else 'FAIL'} {meta.id}@{meta.version}: {message}", file=out)
            for folder, why in problems:
                print(f"FAIL {folder}: {why}", file=out)
            failed = sum(not ok for _, ok, _ in results) + len(problems)
            if failed:
                print(f"error: {failed} model(s) failed verification; reinstall them with "
                      "`covidct models install PATH --force`", file=sys.stderr)
                return ModelError.exit_code
            return 0
    except CovidCTError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    raise ValueError(f"unknown models command {args.models_command!r}")
