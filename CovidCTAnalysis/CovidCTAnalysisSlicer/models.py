"""Choices shown in the panel: installed models (demo ones labelled), device and segment policy.

The panel's labels map to the CLI's values here, in one place. Listing models
reads the registry's metadata files only (no torch), so the panel lists the
installed models before the first Analyze has installed the dependencies; should
the core itself fail to import, the panel says so instead of failing to load.
"""

from __future__ import annotations

from dataclasses import dataclass

# Panel label -> covidct analyze value.
DEVICE_CHOICES: dict[str, str] = {"auto": "auto", "CPU": "cpu", "GPU (CUDA)": "cuda"}
SEGMENT_CHOICES: dict[str, str] = {"if COVID-19": "auto", "always": "always"}
METHOD_CHOICES: dict[str, str] = {"trained models": "model", "HU threshold (no model)": "threshold"}
THRESHOLD_LABEL = next(label for label, value in METHOD_CHOICES.items() if value == "threshold")


@dataclass(frozen=True)
class ModelChoice:
    """One entry of a model combo box: the text shown and the ``ID@VERSION`` passed to the CLI."""

    label: str
    spec: str
    demo: bool
    default: bool = False


def listModelChoices(task: str, modelsDir: str = "") -> tuple[list[ModelChoice], str]:
    """Installed models of ``task`` ("classification"/"segmentation") and a message when there are none.

    The model the CLI would pick without ``--classifier``/``--segmenter`` is marked
    ``default`` and listed first, so that the panel shows which one runs.
    """
    try:
        from CovidCTAnalysisLib.models.registry import ModelRegistry
    except ImportError as e:
        return [], f"Models cannot be listed yet ({e.name or e} is not installed); press Analyze to install the requirements."
    registry = ModelRegistry(modelsDir or None)
    models = [m for m in registry.list() if m.task == task]
    if not models:
        return [], (f"No {task} model is installed in {registry.root}. Use Models > Install model folder or "
                    "Install model zip, or choose Method: HU threshold (needs no model).")
    try:
        chosen = registry.resolve(task)
        defaultSpec = f"{chosen.id}@{chosen.version}"
    except Exception:  # noqa: BLE001 - a broken registry still lists what it can
        defaultSpec = ""
    choices = [ModelChoice(label=m.label_line(), spec=f"{m.id}@{m.version}", demo=m.demo,
                           default=f"{m.id}@{m.version}" == defaultSpec) for m in models]
    choices.sort(key=lambda c: not c.default)
    return choices, ""


def methodWithoutModels(messages: list[str]) -> tuple[str | None, str]:
    """With a model missing (``messages`` from ``listModelChoices``), the method to preselect and why."""
    if not messages:
        return None, ""
    return THRESHOLD_LABEL, ("HU threshold is selected because a trained model is missing: it segments the lungs "
                             "and lesions by Hounsfield units and does not classify. " + " ".join(messages))


PANEL_ACTIONS = ("In Slicer: Models > Install model folder / Install model zip (the same sha256 checks), or "
                 "Method: HU threshold, which needs no model.")


def panelModelMessage(message: str) -> str:
    """The core's "no model" message with the command-line ways to get one replaced by the panel's actions."""
    import re

    replaced, count = re.subn(r"Get one with `make demo`.*?`covidct models install PATH`\.", PANEL_ACTIONS, message,
                              flags=re.S)
    return replaced if count else message
