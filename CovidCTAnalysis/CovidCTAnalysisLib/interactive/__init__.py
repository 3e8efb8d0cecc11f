"""Interactive correction (a step): DeepGrow-style clicks that redraw the lesion around them.

``clicks.py`` (clicks as LPS mm points, Slicer markups files, the refusals), ``guidance.py`` (clicks
→ Gaussian guidance maps on the model grid, MONAI's ``AddGuidanceSignald``), ``roi.py`` (the region
redrawn around a click), ``merge.py`` (only the lesion label changes, only in the ROI and the lungs),
``simulate.py`` (the simulated user of training and of the robot evaluation), ``refine.py`` (one
click → an updated labelmap with a loaded interactive model), ``worker.py`` (the model kept loaded in a
process that answers JSON requests line by line: Slicer's "Correct lesions").
"""
