"""A real MRML scene for the Slicer glue tests (slicer-core wheel), shared by the test files."""

from __future__ import annotations

import slicer


def newScene():
    """A scene with the Segmentations module logic attached, as in Slicer.

    The logic is kept on the scene so it lives as long as the scene does.
    """
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    scene._covidctSegmentationsLogic = logic
    return scene
