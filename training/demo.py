"""``make demo``: train, evaluate and install DEMO models on synthetic phantoms, then analyse one.

    python -m training.demo [--retrain] [--quick]

1. Unless both demo models are installed already (in the registry ``covidct`` reads by default:
   ``$COVIDCT_MODELS_DIR``, else ``~/.cache/covidct/models``; or ``--models-dir``), train
   the classifier and the 4-label segmenter on phantoms (seeds 0-11 and 0-23) plus, when the real CTs are there
   (``--real-data``, default ``$COVIDCT_SHARED_DATA``, else ``<repo>/../shared/data``), hybrids (real lesion-free
   backgrounds with synthetic lesions) and weak labels (the radiologists' slice labels); export them as model
   folders with their training mix and input profile (``training.input_profile``) in the metadata, choose the classifier's slice aggregation on its validation patients (training seeds,
   ``training.tune_aggregation``), evaluate them on phantoms whose seeds were never used in training (100-104) with
   ``training.evaluate`` (the metrics go into their metadata) and install them. Then, unless it is installed
   already, the interactive model (``training.demo_interactive``): trained with simulated clicks, measured by the
   robot user from an empty start and from the demo segmenter's output, installed for ``covidct refine``.
2. Make a fresh phantom (seed 2026) and run ``covidct analyze`` on it; print the summary.

Work files go to ``$COVIDCT_DEMO_DIR`` (default ``<repo>/.demo``). Every step prints a
progress line with the elapsed time; the step timings are written to
``<demo dir>/timings.json`` (and appended to ``timings-history.jsonl``). The models are DEMO (``demo: true``) and say what they saw in
``trained_on`` (phantoms only, or phantoms and N real patients' backgrounds; never a real lesion outline), so every
result made with them says so. ``training_args`` and ``train_and_export`` are the recipe; the leave-one-patient-out
benchmark (``benchmarks/eval_real_lopo.py``) calls them too.
Research use, not for diagnosis.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from CovidCTAnalysisLib.constants import DEMO_TRAINING_MEASURED

from training import demo_interactive
from training.common import REPO_ROOT, write_json
from training.real_cases import covid_ct_md_sample, parse_patients

CLASSIFIER_ID = "covidct-classifier-demo"
SEGMENTER_ID = "covidct-segmenter-demo"
DEMO_VERSION = "1.0.0"
QUICK_VERSION = "0.0.1-quick"  # --quick models never pass for the real demo models
# Phantom seeds the demo models train on (the segmenter draws one patch per case and epoch, so more
# cases cost nothing per epoch-equivalent and widen what it sees); EVAL_SEEDS are never trained on.
TRAIN_SEEDS = {"classifier": "0-11", "segmenter": "0-23"}
PHANTOM_KINDS = "normal,pneumonia,covid"
REAL_INDEX = "covid-ct-md/labels.json"  # under the shared-data root: the real, slice-labelled CTs
EVAL_SEEDS = "100-104"
ANALYSIS_SEED = 2026

# Settings chosen to train on 2 CPU cores within minutes (recorded in each model's metadata). --precision auto
# (training.common.Precision): bf16 autocast where the CPU runs it natively (AVX-512: a step ~1.7x faster than
# fp32), fp32 where it would be emulated (AVX2: ~15x slower).
# Classifier: a from-scratch ResNet-50 needs ~700 steps to see 1-2 % ground glass at all. At 12 epochs (276
# steps) it gave Normal and COVID-19 phantoms of one anatomy the same slice probabilities (accuracy 0.67 on
# seeds 100-104); at 40 epochs, with clear slices trained as Normal and Normal slices at the lesions' heights
# (classifier_slices), it classified all 15 correctly.
CLASSIFIER_ARGS = ["--input-size", "96", "--max-slices-per-case", "12", "--epochs", "40", "--val-every", "5",
                   "--batch-size", "16", "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "1e-4",
                   "--augment-strength", "0.5", "--precision", "auto",
                   "--aggregation", "top_fraction_mean", "--aggregation-fraction", "0.3", "--slice-step", "2"]
# The ROI spans the chest from side to side (128 x 2.5 mm), so that every patch holds the midline:
# left and right are told apart by position, which 64-voxel cubes of one lung could not do.
# Lesions fill under 1 % of the chest: patches are centred on lesion voxels 3 times as often as on each other
# class (--lesion-crop-ratio), and the learning rate anneals (cosine). Measured lesion Dice on seeds 100-104:
# 0.642 (seeds 0-11, 60 epochs, fp32), 0.731 once post-processing kept consolidations whole, 0.801 with
# seeds 0-23 and 40 epochs in bf16 (about 8 s/epoch on 2 free cores).
SEGMENTER_ARGS = ["--spacing", "2.5,2.5,2.5", "--roi", "128,64,48", "--epochs", "40", "--batch-size", "2",
                  "--num-samples", "1", "--optimizer", "adamw", "--lr", "2e-3", "--weight-decay", "1e-4",
                  "--lr-schedule", "cosine", "--lesion-crop-ratio", "3", "--precision", "auto",
                  "--val-every", "20", "--margin-mm", "10", "--train-fraction", "0.85"]
# With the real parts an epoch has more batches (classifier 36 instead of 23: hybrids +163 slices, weak +48;
# segmenter 37 instead of 31: +10 hybrids, +3 weak). The segmenter keeps the phantom-only step count (40 x 31;
# its phantom lesion Dice stayed 0.765-0.777 in the leave-one-patient-out folds). The classifier did not: at 25
# epochs (900 steps, ~575 of them phantom slices) the folds' phantom accuracy fell to 0.73-0.87 (Normal called
# COVID-19, validation accuracy still rising), so it keeps its 40 epochs and the real slices add steps (1440).
REAL_ARGS = {"classifier": [], "segmenter": ["--iterations-per-epoch", "31"]}
QUICK = {"classifier": ["--epochs", "1", "--max-slices-per-case", "4"], "segmenter": ["--epochs", "2", "--val-every", "1"],
         "train_seeds": "0-2", "eval_seeds": "100"}


class Steps:
    """Numbered progress lines with elapsed time, and a record of how long each step took."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.t0 = total, 0, time.monotonic()
        self.timings: dict[str, float] = {}
        self._name, self._start = None, None

    def start(self, name: str, what: str) -> None:
        self.finish()
        self.n += 1
        self._name, self._start = name, time.monotonic()
        print(f"==> [demo {self.n}/{self.total}] {what}  (elapsed {self.elapsed():.0f} s)", flush=True)

    def finish(self) -> None:
        if self._name is not None:
            self.timings[self._name] = round(time.monotonic() - self._start, 1)
            print(f"    done: {self._name} in {self.timings[self._name]:.0f} s", flush=True)
            self._name = None

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


MEASURED_DURATIONS = DEMO_TRAINING_MEASURED  # the first line says so when no full run is recorded here


def expected_duration(work: Path) -> str:
    """How long training will take: the last full (not --quick) run in ``work`` when there is one, else
    ``MEASURED_DURATIONS``."""
    runs = []
    history = work / "timings-history.jsonl"
    if history.is_file():
        for line in history.read_text().splitlines():
            try:
                run = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run
            if run.get("quick") is False and set(run.get("trained", ())) == {"classifier", "segmenter", "interactive"}:
                runs.append(run)
    if runs:
        return (f"the last full run here took {runs[-1]['total_s'] / 60:.0f} min "
                f"({runs[-1].get('finished', 'date unknown')})")
    return MEASURED_DURATIONS


def installed(registry, model_id: str, version: str = DEMO_VERSION):
    for meta in registry.list():
        if meta.id == model_id and meta.version == version:
            return meta
    return None


def default_real_data() -> Path | None:
    """The real CTs the demo trains on by default: ``$COVIDCT_SHARED_DATA``, else ``<repo>/../shared/data`` when it
    holds the COVID-CT-MD sample (``covid-ct-md/labels.json``), else None (phantoms only)."""
    env = os.environ.get("COVIDCT_SHARED_DATA")
    if env:
        return Path(env)
    here = REPO_ROOT.parent / "shared" / "data"
    return here if (here / REAL_INDEX).is_file() else None


def check_real_data(real_data: Path | None) -> Path | None:
    """``real_data`` if it holds the COVID-CT-MD sample, None for None; a clear error otherwise."""
    if real_data is None:
        return None
    if not (Path(real_data) / REAL_INDEX).is_file():
        raise SystemExit(f"--real-data {real_data}: expected the shared-data root holding {REAL_INDEX} "
                         "(or --no-real-data to train on phantoms only)")
    return Path(real_data).resolve()


def real_patients(real_data: Path | None, real_exclude=()) -> list[str]:
    """The real patients a model trained with (real_data, real_exclude) sees."""
    if real_data is None:
        return []
    return [c.patient for c in covid_ct_md_sample(real_data, frozenset(real_exclude))]


def training_args(kind: str, real_data: Path | None = None, real_exclude=(), quick: bool = False,
                  train_seeds: str | None = None) -> list[str]:
    """The demo recipe's training arguments for ``kind`` (all but ``--output-dir`` and ``--cache-dir``).

    With ``real_data`` the model trains on ``phantoms,hybrids,weak`` (hybrids: the real lesion-free backgrounds with
    synthetic lesions; weak: the radiologists' slice labels), minus the patients in ``real_exclude``; without it, on
    phantoms only. ``make demo`` and the leave-one-patient-out benchmark both call this, so their models match."""
    if kind not in ("classifier", "segmenter"):
        raise ValueError(f"kind {kind!r}: expected 'classifier' or 'segmenter'")
    seeds = train_seeds or (QUICK["train_seeds"] if quick else TRAIN_SEEDS[kind])
    exclude = sorted(parse_patients(",".join(real_exclude)))
    if real_data is None:
        if exclude:
            raise ValueError(f"real_exclude {exclude} without real_data: there are no real patients to leave out")
        data = ["--dataset", "phantoms"]
    else:
        data = ["--dataset", "phantoms,hybrids,weak", "--real-data", str(real_data)]
        if exclude:
            data += ["--real-exclude", ",".join(exclude)]
        # One lesion seed per real background and kind (10 cases from 5 backgrounds): both trainers share the
        # hybrid cache, which costs ~1-2 min per case to paint on one core, so more seeds would not fit 25 min.
        data += ["--hybrid-seeds", "0"]
    recipe = CLASSIFIER_ARGS if kind == "classifier" else SEGMENTER_ARGS
    if real_data is not None:
        recipe = [*recipe, *REAL_ARGS[kind]]
    return [*data, "--phantom-seeds", seeds, "--phantom-kinds", PHANTOM_KINDS, *recipe,
            *(QUICK[kind] if quick else []), "--seed", "0"]


def mix_of(run_args: list[str], real_data: Path | None, real_exclude=()) -> dict:
    """What a model trained with ``run_args`` saw, for its metadata (``training_data.mix``) and its lines."""
    value = dict(zip(run_args, run_args[1:], strict=False))
    patients = real_patients(real_data, real_exclude)
    return {"parts": value["--dataset"].split(","), "phantom_seeds": value["--phantom-seeds"],
            "phantom_kinds": PHANTOM_KINDS, "real_data": str(real_data) if real_data else None,
            "real_patients": patients, "real_excluded": sorted(real_exclude),
            "real_lesion_outlines": 0}


def describe_mix(mix: dict) -> tuple[str, str]:
    """(trained_on line, description) of a DEMO model with this training mix."""
    phantoms = f"DEMO: synthetic chest phantoms (seeds {mix['phantom_seeds']}; {mix['phantom_kinds']})"
    if not mix["real_patients"]:
        return (f"{phantoms}; phantoms only (no real CT given: --real-data); not real patients",
                "DEMO model, trained on synthetic phantoms only: it shows the pipeline working and must not be used "
                "on patients.")
    n, who = len(mix["real_patients"]), ", ".join(mix["real_patients"])
    real = (f"{n} real patients' lesion-free CT backgrounds with synthetic lesions and the radiologists' slice labels "
            f"({who}); no real lesion outline")
    return (f"{phantoms} and {real}",
            f"DEMO model, trained on phantoms and on {real}: it shows the pipeline working and must not be used on "
            "patients.")


_PROFILES: dict[str, dict] = {}  # image path -> its input profile (the segmenter's phantoms include the classifier's)


def record_training_mix(model_dir: Path, mix: dict, phantoms: list[Path], real: list[Path], log=print) -> None:
    """Write the mix (``training_data.mix``, ``trained_on``, description) and the input profile of the training
    images (what the plausibility guard compares a scan with) into ``model_dir/metadata.json``."""
    from CovidCTAnalysisLib.models.metadata import METADATA_FILE
    from CovidCTAnalysisLib.results.plausibility import profile_range

    from training.input_profile import image_profile, record_profile
    from training.parallel import map_processes

    images = [*phantoms, *real]
    missing = [path for path in images if str(path) not in _PROFILES]
    for path, profile in zip(missing, map_processes(image_profile, [(path,) for path in missing]), strict=True):
        _PROFILES[str(path)] = profile
    source = (f"{len(phantoms)} training phantoms" +
              (f" and {len(real)} real CTs: " + ", ".join(Path(p).name for p in real) if real else ""))
    record_profile(model_dir, profile_range([_PROFILES[str(p)] for p in images]), source)
    path = Path(model_dir) / METADATA_FILE
    raw = json.loads(path.read_text())
    raw["trained_on"], description = describe_mix(mix)
    raw["description"] = description + " " + raw["name"].removeprefix("DEMO ") + "."
    raw["training_data"]["mix"] = mix
    write_json(path, raw)
    log(f"    {Path(model_dir).name}: {raw['trained_on']}; input profile of {len(images)} training images")


def train_and_export(kind: str, model_dir: Path, steps: Steps, work: Path, cache: Path, run_args: list[str],
                     eval_seeds: str, version: str = DEMO_VERSION, phantom_args: tuple[str, ...] = (),
                     real_data: Path | None = None, real_exclude=()):
    """Train ``kind`` with ``run_args`` (from ``training_args``), export it to ``model_dir`` (DEMO), tune the
    classifier's aggregation, evaluate on unseen phantom seeds, record its training mix and input profile.
    Installs nothing; returns the metadata. ``phantom_args`` (e.g. ``--phantom-spacing 9``) go to every step that
    makes phantoms (the tests' tiny demo models use coarse phantoms, Testing/tiny_models.py)."""
    from CovidCTAnalysisLib.models.folder import check_model_folder

    from training import evaluate, export
    from training import train_classifier as tc
    from training import train_segmenter as ts
    from training.phantom_cache import parse_seeds, phantom_set

    run_dir = work / f"{kind}-run"
    mix = mix_of(run_args, real_data, real_exclude)
    phantoms = ["--phantom-kinds", PHANTOM_KINDS, "--cache-dir", str(cache), *phantom_args]
    real_line = f" and {len(mix['real_patients'])} real patients {mix['real_patients']}" if mix["real_patients"] \
        else " only (no real data: phantoms only)"
    steps.start(f"train_{kind}", f"training the demo {kind} on phantoms (seeds {mix['phantom_seeds']}){real_line}")
    (tc if kind == "classifier" else ts).main([*run_args, *phantom_args, "--cache-dir", str(cache),
                                               "--output-dir", str(run_dir)])
    steps.start(f"export_{kind}", f"exporting the {kind} model folder")
    model_id = CLASSIFIER_ID if kind == "classifier" else SEGMENTER_ID
    export.export(run_dir, model_dir, model_id, version, demo=True, force=True)
    if kind == "classifier":
        from training import tune_aggregation

        steps.start("tune_classifier", "choosing the slice aggregation on the validation patients (training seeds)")
        tune_aggregation.main(["--model-dir", str(model_dir), "--dataset", "phantoms", "--phantom-seeds",
                               mix["phantom_seeds"], *phantoms])
    steps.start(f"evaluate_{kind}", f"evaluating the {kind} on unseen phantom seeds {eval_seeds}")
    evaluate.main(["--model-dir", str(model_dir), "--dataset", "phantoms", "--phantom-seeds", eval_seeds, *phantoms])
    steps.start(f"profile_{kind}", f"recording the training mix and input profile of the {kind}")
    spacing = float(phantom_args[phantom_args.index("--phantom-spacing") + 1]) \
        if "--phantom-spacing" in phantom_args else None
    phantom_images = [f.image for f in phantom_set(PHANTOM_KINDS.split(","), parse_seeds(mix["phantom_seeds"]),
                                                   cache, spacing=spacing, workers=1)]
    real_images = [c.image_path for c in covid_ct_md_sample(real_data, frozenset(real_exclude))] if real_data else []
    record_training_mix(model_dir, mix, phantom_images, real_images)
    return check_model_folder(model_dir)


def train_and_install(kind: str, steps: Steps, work: Path, registry, train_seeds: str, eval_seeds: str,
                      extra: list[str], cache: Path, version: str = DEMO_VERSION,
                      phantom_args: tuple[str, ...] = (), real_data: Path | None = None, quick: bool = False) -> None:
    """``train_and_export`` with the demo recipe (``extra`` appended: argparse keeps the last value), then install."""
    run_args = training_args(kind, real_data, (), quick, train_seeds) + list(extra)
    model_dir = work / f"{kind}-model"
    train_and_export(kind, model_dir, steps, work, cache, run_args, eval_seeds, version, phantom_args, real_data)
    model_id = CLASSIFIER_ID if kind == "classifier" else SEGMENTER_ID
    steps.start(f"install_{kind}", f"installing {model_id} into {registry.root}")
    meta = registry.install(model_dir, force=True)
    print(f"    installed {meta.label_line()}", flush=True)


def print_metrics(meta) -> None:
    m = meta.eval_metrics
    if meta.task == "classification":
        print(f"    {meta.id}: accuracy {m.get('accuracy')} over {m.get('n')} unseen phantom patients", flush=True)
    else:
        per = m.get("per_class", {})
        print(f"    {meta.id}: Dice (mean±std, %) " + ", ".join(f"{k} {v.get('dice_text')}" for k, v in per.items()),
              flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.split("\n")[0])
    p.add_argument("--retrain", action="store_true", help="train again even if the demo models are installed")
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke test; the models will be poor)")
    p.add_argument("--models-dir", help="default: where covidct looks, $COVIDCT_MODELS_DIR or ~/.cache/covidct/models")
    p.add_argument("--work-dir", help="default $COVIDCT_DEMO_DIR or <repo>/.demo")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--real-data", type=Path, default=None,
                   help="shared-data root with the real CTs (covid-ct-md/labels.json); default $COVIDCT_SHARED_DATA, "
                        "else <repo>/../shared/data when it holds them; without it the models train on phantoms only")
    p.add_argument("--no-real-data", action="store_true", help="train on phantoms only even when real CTs are there")
    args = p.parse_args(argv)
    real_data = None if args.no_real_data else check_real_data(args.real_data or default_real_data())
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    from CovidCTAnalysisLib.models.registry import ModelRegistry

    registry = ModelRegistry(args.models_dir)
    work = Path(args.work_dir or os.environ.get("COVIDCT_DEMO_DIR") or REPO_ROOT / ".demo").resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "phantom-cache"
    eval_seeds = QUICK["eval_seeds"] if args.quick else EVAL_SEEDS
    version = QUICK_VERSION if args.quick else DEMO_VERSION
    todo = [k for k, mid in (("classifier", CLASSIFIER_ID), ("segmenter", SEGMENTER_ID))
            if args.retrain or installed(registry, mid, version) is None]
    interactive = args.retrain or installed(registry, demo_interactive.INTERACTIVE_ID, version) is None
    steps = Steps(total=sum(6 if k == "classifier" else 5 for k in todo) + 4 * interactive + 2)
    print(f"==> demo: models in {registry.root}; work files in {work}. Research use, not for diagnosis.", flush=True)
    if real_data is None:
        print("==> demo: no real CTs (--real-data): the models train on synthetic phantoms only", flush=True)
    else:
        print(f"==> demo: training on phantoms plus the real CTs of {real_data} (hybrids: real backgrounds with "
              f"synthetic lesions; weak: slice labels; patients {real_patients(real_data)})", flush=True)
    if not todo and not interactive:
        print("==> demo models already installed (use --retrain to train them again)", flush=True)
    if todo or interactive:
        print(f"==> demo: training {', '.join(todo + ['interactive'] * interactive)}: {expected_duration(work)}. "
              "Each step prints its progress; the epoch lines say how long is left.", flush=True)
    for kind in todo:
        train_seeds = QUICK["train_seeds"] if args.quick else TRAIN_SEEDS[kind]
        train_and_install(kind, steps, work, registry, train_seeds, eval_seeds, [], cache, version,
                          real_data=real_data, quick=args.quick)
    if interactive:  # after the segmenter: its output is the robot user's automatic start
        demo_interactive.train_and_install_interactive(
            steps, work, registry, QUICK["train_seeds"] if args.quick else demo_interactive.TRAIN_SEEDS, eval_seeds,
            cache, version, SEGMENTER_ID, quick=args.quick)
    for mid in (CLASSIFIER_ID, SEGMENTER_ID):
        meta = installed(registry, mid, version)
        if meta is not None:
            print_metrics(meta)
    if (meta := installed(registry, demo_interactive.INTERACTIVE_ID, version)) is not None:
        demo_interactive.print_robot_user(meta)
    steps.start("phantom", f"making a fresh phantom (covid, seed {ANALYSIS_SEED}) to analyse")
    from CovidCTAnalysisLib.phantom.generator import make_phantom, write_phantom

    files = write_phantom(make_phantom("covid", ANALYSIS_SEED), work / f"phantom-{ANALYSIS_SEED}", force=True)
    steps.start("analyze", "covidct analyze on the fresh phantom (with its truth as reference)")
    from CovidCTAnalysisLib.cli.main import main as covidct

    out = work / f"analysis-{ANALYSIS_SEED}"
    rc = covidct(["analyze", str(files["image"]), "--output-dir", str(out), "--force", "--segment", "always",
                  "--reference", str(files["truth"]), "--models-dir", str(registry.root), "--progress", "plain",
                  "--classifier", f"{CLASSIFIER_ID}@{version}", "--segmenter", f"{SEGMENTER_ID}@{version}"])
    steps.finish()
    timings = {"steps_s": steps.timings, "total_s": round(steps.elapsed(), 1),
               "trained": todo + ["interactive"] * interactive, "quick": bool(args.quick),
               "threads": torch.get_num_threads()}
    write_json(work / "timings.json", timings)
    with open(work / "timings-history.jsonl", "a") as f:  # every run, so a later quick run keeps the first
        f.write(json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **timings}) + "\n")
    if rc == 0:
        print(f"==> analysis of the fresh phantom written to {out} (report.json, segmentation.seg.nrrd, preview.png)",
              flush=True)
    print(f"==> demo finished in {timings['total_s']:.0f} s; step timings: {json.dumps(steps.timings)}", flush=True)
    print(f"==> DEMO models, trained on synthetic phantoms{' only' if real_data is None else ' and real backgrounds'}"
          ": research use, not for diagnosis.", flush=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
