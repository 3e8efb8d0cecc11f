"""Record what a model saw in training: the ``input_profile`` range in its ``metadata.json``.

    python -m training.input_profile --model-dir out/model-cls --dataset phantoms --phantom-seeds 0-23 \\
        --cache-dir ~/.cache/covidct/phantoms
    python -m training.input_profile --model-dir out/model-seg --images a.nii.gz b.nii.gz

For every training image: threshold lungs, then ``results.plausibility.input_profile``
(lung HU percentiles, noise, lung volume); the range over all of them goes into
``metadata.json`` under ``input_profile`` (weights and sha256 unchanged). At analysis time the
plausibility guard compares each scan with it and warns when the scan lies outside.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import SimpleITK as sitk
from CovidCTAnalysisLib.models.folder import check_model_folder
from CovidCTAnalysisLib.models.metadata import METADATA_FILE
from CovidCTAnalysisLib.results.plausibility import input_profile, profile_range
from CovidCTAnalysisLib.threshold.lungs import segment_lungs

from training.common import write_json
from training.parallel import map_processes
from training.phantom_cache import parse_seeds, phantom_set


def image_profile(path: Path) -> dict:
    """The ``input_profile`` of one image file, with its threshold lungs."""
    image = sitk.ReadImage(str(path))
    return input_profile(image, segment_lungs(image))


def profile_images(paths: list[Path], log=print) -> dict:
    """The ``input_profile`` range over the images at ``paths`` (plus ``images``: how many), one process per core."""
    def done(i, _job, profile):
        log(f"profile {i + 1}/{len(paths)} {Path(paths[i]).name}: {profile}")

    return profile_range(map_processes(image_profile, [(path,) for path in paths], done=done))


def record_profile(model_dir: Path, profile: dict, source: str) -> None:
    """Put ``profile`` (and where it came from) into ``metadata.json`` atomically, then re-check the folder."""
    path = Path(model_dir) / METADATA_FILE
    raw = json.loads(path.read_text())
    raw["input_profile"] = {**profile, "source": source}
    write_json(path, raw)
    check_model_folder(model_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.input_profile", description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True, help="model folder whose metadata.json gets the profile")
    p.add_argument("--dataset", choices=("phantoms", "images"), default="images")
    p.add_argument("--images", nargs="*", default=[], help="training images (NIfTI/NRRD) for --dataset images")
    p.add_argument("--phantom-seeds", default="0-11")
    p.add_argument("--phantom-kinds", default="normal,pneumonia,covid")
    p.add_argument("--cache-dir", help="phantom cache folder (--dataset phantoms)")
    args = p.parse_args(argv)
    if args.dataset == "phantoms":
        if not args.cache_dir:
            raise SystemExit("--dataset phantoms needs --cache-dir (the phantom cache the model was trained from)")
        files = phantom_set(args.phantom_kinds.split(","), parse_seeds(args.phantom_seeds), args.cache_dir)
        paths = [f.image for f in files]
        source = f"phantoms {args.phantom_kinds} seeds {args.phantom_seeds}"
    else:
        paths = [Path(x) for x in args.images]
        missing = [str(x) for x in paths if not x.is_file()]
        if not paths or missing:
            raise SystemExit(f"--images: expected existing image files, got {args.images!r} (missing: {missing})")
        source = f"{len(paths)} images: " + ", ".join(x.name for x in paths)
    record_profile(Path(args.model_dir), profile_images(paths), source)
    print(f"recorded input_profile of {len(paths)} images in {Path(args.model_dir) / METADATA_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
