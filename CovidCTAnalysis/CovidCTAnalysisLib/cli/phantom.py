"""``covidct phantom``: write a synthetic chest CT and its truth labels.

The dispatcher (``cli/main.py``) calls :func:`add_parser` with its subparsers and
:func:`run` with the parsed arguments; errors are ``CovidCTError``s that it
turns into exit codes. Spacing, orientation and size vary with the seed unless
forced.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from CovidCTAnalysisLib.phantom.generator import KINDS, make_phantom, random_direction, write_phantom


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``phantom`` subcommand to an argparse subparsers object; return its parser."""
    p = subparsers.add_parser(
        "phantom",
        help="write a synthetic chest CT phantom (image.nii.gz) and its truth labels (truth.nii.gz)",
        description="Write a seeded synthetic chest CT (int16 HU) and its truth labels (1 left lung, "
        "2 right lung, 3 lesion). Spacing, orientation and size vary with the seed unless forced. "
        "Synthetic data for testing and demos; research use, not for diagnosis.",
    )
    p.add_argument("--kind", required=True, choices=KINDS, help="normal, pneumonia (lobar) or covid (GGO)")
    p.add_argument("--seed", required=True, type=int, help="integer >= 0; the same seed gives the same phantom")
    p.add_argument("--output-dir", required=True, type=Path, help="folder for image.nii.gz and truth.nii.gz")
    p.add_argument("--size", nargs=3, type=int, metavar=("X", "Y", "Z"), help="voxels (default: from the seed)")
    p.add_argument("--spacing", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="mm (default: from the seed, 1.2-2.0 in-plane, 1.5-5 slices)")
    p.add_argument("--identity-orientation", action="store_true",
                   help="identity direction matrix (default: an axis permutation/flip chosen by the seed)")
    p.add_argument("--force", action="store_true", help="overwrite existing image.nii.gz / truth.nii.gz")
    return p


def run(args: argparse.Namespace) -> int:
    """Make and write the phantom; print what was written. Raises CovidCTError subclasses on bad input."""
    direction = None if args.identity_orientation else random_direction(args.seed)
    phantom = make_phantom(args.kind, args.seed, size=tuple(args.size) if args.size else None,
                           spacing=tuple(args.spacing) if args.spacing else None, direction=direction)
    paths = write_phantom(phantom, args.output_dir, force=args.force)
    img = phantom.image
    print(f"phantom kind={phantom.kind} seed={phantom.seed} (synthetic; research use, not for diagnosis)")
    print(f"  size (x, y, z): {img.GetSize()}  spacing (mm): {tuple(round(s, 4) for s in img.GetSpacing())}")
    print(f"  direction: {tuple(round(v, 3) for v in img.GetDirection())}")
    print(f"  lungs: left {phantom.lung_volume_ml(1):.1f} mL, right {phantom.lung_volume_ml(2):.1f} mL; "
          f"lesion {phantom.lesion_volume_ml():.1f} mL; noise SD {phantom.info.get('noise_sd_hu', 0):.1f} HU")
    for key, path in paths.items():
        print(f"  wrote {key}: {path}")
    return 0
