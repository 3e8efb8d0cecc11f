"""The rib cage around the lungs: where a lung lesion can lie at all.

A network trained on phantoms and a few real scans paints "lesion" on tissue that
merely looks like it: on real CTs the demo segmenter labelled the liver, spleen,
kidneys and chest-wall muscle (normal001: 9.5 % of the lung volume, nearly all of
it below the lungs). Lung lesions lie inside the rib cage, so the model path keeps
lesion only there (``inference.postprocess``).

The cage of each axial slice that holds lung is the filled convex hull of the lung
and the bone within ``dense_lung.RIB_SEARCH_MM`` of it (ribs, spine, sternum; the
arms and shoulder blades lie further out), on the threshold method's working grid.
"The lung" is the threshold method's, which already includes the consolidation it
recognises (``dense_lung``). Unlike ``dense_lung.rib_cavity`` the hull is not
shrunk: a subpleural lesion reaches the ribs. Measured on the leave-one-patient-out
models (issue 10): normal001 lesion 9.5 -> 1.3 % of lung, P001 lesion-slice
specificity 0.34 -> 0.75 at sensitivity 0.97 -> 0.95; on phantom seeds 100-104 the
cage holds 99.7-100 % of the true COVID-19 lesions and 88.5-99.9 % of the
pneumonia consolidation (a lobe consolidated to the ribs is far from aerated lung,
so fewer ribs count as near).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from CovidCTAnalysisLib.constants import LUNG_BAND_HU
from CovidCTAnalysisLib.threshold.body_mask import body_and_inside_air
from CovidCTAnalysisLib.threshold.dense_lung import rib_bone, rib_hull
from CovidCTAnalysisLib.threshold.grid import array_to_image, labels_to_grid, to_working


def inside_rib_cage(image: sitk.Image, lungs: sitk.Image) -> sitk.Image:
    """uint8 0/1 on ``image``'s grid: inside the rib cage on the slices that hold ``lungs`` (any non-zero label).

    ``lungs`` is on ``image``'s grid (``threshold.lungs.segment_lungs``). Empty where there is no lung.
    """
    work = to_working(image)
    lung = sitk.GetArrayViewFromImage(labels_to_grid(lungs, work.image)) > 0
    body, _ = body_and_inside_air(work.hu, work.outside_fov, LUNG_BAND_HU[1])
    hull = rib_hull(rib_bone(work.hu, body, lung, work.image.GetSpacing()), lung)
    return labels_to_grid(array_to_image(hull.astype(np.uint8), work.image), image)
