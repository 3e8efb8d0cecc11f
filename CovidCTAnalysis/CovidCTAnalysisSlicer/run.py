"""One analysis from start to scene: temp files, the background CLI, and loading its outputs.

``AnalysisRun.start`` writes the input volume (and the reference segmentation,
if any) to a private temp folder and starts ``covidct analyze`` there; the
caller polls it (the Slicer Widget from a ``QTimer``, tests and scripts with
``wait()``); ``finish`` loads the outputs into the scene; ``cancel`` kills the
process. Both ``finish`` and ``cancel`` delete the temp folder. Nothing touches
the scene before the process has succeeded, so a cancelled or failed run leaves
no nodes behind.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import SimpleITK as sitk

from CovidCTAnalysisSlicer.process import (
    AnalysisProcess,
    AnalyzeOptions,
    buildAnalyzeCommand,
    environmentWithModulePath,
)
from CovidCTAnalysisSlicer.progress_events import ProgressEvent
from CovidCTAnalysisSlicer.results import AnalysisResults, applyAnalysisOutputs
from CovidCTAnalysisSlicer.segmentations import referenceLabelmapFromSegmentationNode
from CovidCTAnalysisSlicer.volumes import writeVolumeNodeForCore

INPUT_FILE = "input.nrrd"
REFERENCE_FILE = "reference.nii.gz"
OUTPUT_FOLDER = "output"


class AnalysisRun:
    """A started analysis of one volume node."""

    def __init__(self, volumeNode, workDir: Path, process: AnalysisProcess) -> None:
        self.volumeNode = volumeNode
        self.workDir = workDir
        self.outputDir = workDir / OUTPUT_FOLDER
        self.process = process
        self.results: AnalysisResults | None = None

    @classmethod
    def start(cls, volumeNode, options: AnalyzeOptions, pythonExecutable: str, moduleDir: str | Path,
              referenceSegmentationNode=None, environment: dict[str, str] | None = None,
              tempRoot: str | Path | None = None) -> AnalysisRun:
        """Write the inputs to a new temp folder and start the CLI with ``pythonExecutable``.

        ``moduleDir`` is the folder holding ``CovidCTAnalysisLib`` (put first on the
        subprocess's PYTHONPATH); ``environment`` is the base environment (Slicer passes
        its startup environment). Errors in the inputs are raised here, before any process starts.
        """
        if volumeNode is None:
            raise ValueError("no input volume selected; choose a CT volume")
        workDir = Path(tempfile.mkdtemp(prefix="CovidCTAnalysis-", dir=None if tempRoot is None else str(tempRoot)))
        try:
            inputPath = writeVolumeNodeForCore(volumeNode, workDir / INPUT_FILE)
            referencePath = ""
            if referenceSegmentationNode is not None:
                reference = referenceLabelmapFromSegmentationNode(referenceSegmentationNode, volumeNode)
                referencePath = str(workDir / REFERENCE_FILE)
                sitk.WriteImage(reference, referencePath, True)
            options = dataclasses.replace(options, reference=referencePath, force=True)
            command = buildAnalyzeCommand(pythonExecutable, inputPath, workDir / OUTPUT_FOLDER, options)
            process = AnalysisProcess(command, environment=environmentWithModulePath(moduleDir, environment),
                                      cwd=workDir)
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return cls(volumeNode, workDir, process)

    def poll(self) -> list[ProgressEvent]:
        """New progress events (never blocks)."""
        return self.process.poll()

    @property
    def finished(self) -> bool:
        return self.process.finished

    @property
    def state(self) -> str:
        return self.process.state

    def wait(self, timeout: float | None = None) -> list[ProgressEvent]:
        """Block until the process ends; returns its events (for the self-test and scripts)."""
        return self.process.wait(timeout)

    def cancel(self) -> None:
        """Kill the process and delete the temp folder; the scene is not touched."""
        self.process.cancel()
        self.cleanup()

    def finish(self, scene) -> AnalysisResults:
        """After success, load the outputs into ``scene`` and delete the temp folder.

        Raises ``RuntimeError`` with the CLI's own message when the run failed.
        """
        try:
            if self.process.state != "succeeded":
                raise RuntimeError(self.process.errorMessage or f"the analysis did not succeed ({self.process.state})")
            self.results = applyAnalysisOutputs(scene, self.volumeNode, self.outputDir)
            return self.results
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.workDir, ignore_errors=True)
