"""MRML glue of the CovidCTAnalysis Slicer module.

Functions here convert between MRML nodes and the Slicer-free core
(``CovidCTAnalysisLib``): volume nodes to SimpleITK images (RAS to LPS), the
core's ``.seg.nrrd`` to segmentation nodes, ``report.json`` to table nodes,
reference segmentations to labelmaps, and the background ``covidct analyze``
process. Nothing here imports ``qt`` or ``ctk``, so all of it runs, and is tested,
with the MRML libraries of the ``slicer-core`` wheel outside the Slicer application.

Names are camelCase, as in Slicer. Research use, not for diagnosis.
"""
