"""The rib cage and the diaphragm around the lungs: where a lung lesion can lie at all.

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

Inside the cage, the lowest lung slices also hold the domes of the liver and spleen. On the normal CT of its
leave-one-patient-out fold the demo segmenter painted a 65 mL piece at a median 38 HU there (the diaphragm dome
in 2 mm slices). The diaphragm surface is the threshold method's (``dense_lung.below_diaphragm``: in each
column, the top of the tissue rising from the lowest lung slice, with consolidation plateaus narrower than
80 mm taken off); post-processing removes lesion pieces that lie mostly below it (a basal consolidation that
straddles it stays whole). On unseen phantoms (seeds 100-104, 2 mm grid) none of the COVID-19 lesion lies below
it, and 0-18 % of the pneumonia consolidation (seed 100, a basal lobe: its piece lies mostly above).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

from CovidCTAnalysisLib.constants import DENSE_LUNG_MAX_HU, LUNG_BAND_HU
from CovidCTAnalysisLib.threshold.body_mask import body_and_inside_air
from CovidCTAnalysisLib.threshold.dense_lung import below_diaphragm, rib_bone, rib_hull
from CovidCTAnalysisLib.threshold.grid import array_to_image, labels_to_grid, to_working


class LesionBounds(NamedTuple):
    """uint8 0/1 masks on the image's grid."""

    rib_cage: sitk.Image  # inside the rib cage, on the slices that hold lung
    below_diaphragm: sitk.Image  # under the diaphragm surface


def lesion_bounds(image: sitk.Image, lungs: sitk.Image) -> LesionBounds:
    """The rib cage and what lies below the diaphragm, on ``image``'s grid (module doc).

    ``lungs`` is on ``image``'s grid (``threshold.lungs.segment_lungs``, any non-zero label). Both masks are
    empty where there is no lung.
    """
    work = to_working(image)
    lung = sitk.GetArrayViewFromImage(labels_to_grid(lungs, work.image)) > 0
    body, _ = body_and_inside_air(work.hu, work.outside_fov, LUNG_BAND_HU[1])
    sx, sy, _ = work.image.GetSpacing()
    hull = rib_hull(rib_bone(work.hu, body, lung, work.image.GetSpacing()), lung)
    below = below_diaphragm(work.hu >= DENSE_LUNG_MAX_HU, lung, body, (sy, sx))

    def on_image(mask: np.ndarray) -> sitk.Image:
        return labels_to_grid(array_to_image(mask.astype(np.uint8), work.image), image)

    return LesionBounds(rib_cage=on_image(hull), below_diaphragm=on_image(below))
