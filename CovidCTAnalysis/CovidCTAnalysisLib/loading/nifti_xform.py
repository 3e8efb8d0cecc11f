"""A NIfTI whose qform and sform disagree: say which one the image was placed with.

A NIfTI-1 header carries two placements of the voxels in space, the qform (rotation + offset) and the
sform (a free affine), each with a code saying what it means. When they disagree, readers differ:
clicks and labels then land in the wrong place or on the wrong side. We read the file as ITK and
3D Slicer (which uses ITK's reader) do, and say which of the two that was. Measured with SimpleITK
2.5.7 / ITK 5.4 (``Testing/test_faults_scans.py`` checks it on every run): the sform is used when its
code is 1 (scanner anatomical) or the qform code is 0; otherwise the qform (e.g. sform code 2
"aligned" or 4 "MNI" with a qform present). Which one was used is found by comparing the image ITK
produced with both affines, not by restating that rule, so a future ITK that changes it is still
reported truthfully.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

TOLERANCE_MM = 1e-3
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_AXIS = ("left-right", "anterior-posterior", "head-foot")


def _header(path: Path) -> bytes:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read(348)


def nifti_affines(path: Path) -> tuple[int, int, np.ndarray, np.ndarray] | None:
    """(qform_code, sform_code, qform 3x4, sform 3x4) in RAS mm of a NIfTI-1 header; None if not NIfTI-1."""
    h = _header(path)
    if len(h) < 348:
        return None
    endian = next((e for e in "<>" if struct.unpack(e + "i", h[:4])[0] == 348), None)
    if endian is None:
        return None
    pixdim = struct.unpack(endian + "8f", h[76:108])
    qcode, scode = struct.unpack(endian + "2h", h[252:256])
    b, c, d, qx, qy, qz = struct.unpack(endian + "6f", h[256:280])
    srow = np.array(struct.unpack(endian + "12f", h[280:328]), dtype=float).reshape(3, 4)
    a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rot = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                    [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                    [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    qform = np.hstack([rot @ np.diag([pixdim[1], pixdim[2], qfac * pixdim[3]]), [[qx], [qy], [qz]]])
    return int(qcode), int(scode), qform, srow


def _image_affine_ras(image: sitk.Image) -> np.ndarray:
    d = np.array(image.GetDirection(), dtype=float).reshape(3, 3) * np.array(image.GetSpacing(), dtype=float)
    return np.hstack([_LPS_TO_RAS @ d, (_LPS_TO_RAS @ np.array(image.GetOrigin(), dtype=float))[:, None]])


def _how_they_differ(q: np.ndarray, s: np.ndarray) -> str:
    parts = []
    for j in range(3):
        qa, sa = int(np.argmax(np.abs(q[:, j]))), int(np.argmax(np.abs(s[:, j])))
        if qa != sa:
            parts.append(f"voxel axis {j} runs {_AXIS[qa]} in one and {_AXIS[sa]} in the other")
        elif np.sign(q[qa, j]) != np.sign(s[sa, j]):
            side = " (they disagree on which side is the patient's left)" if qa == 0 else ""
            parts.append(f"voxel axis {j} points opposite ways along {_AXIS[qa]}{side}")
    shift = float(np.linalg.norm(q[:, 3] - s[:, 3]))
    if shift > TOLERANCE_MM:
        parts.append(f"their origins are {shift:.1f} mm apart")
    return "; ".join(parts) or "their axes differ slightly in direction or voxel size"


def qform_sform_note(path: Path, image: sitk.Image) -> str | None:
    """A note naming the transform ITK used when both are set and disagree; None when they agree or one is unset."""
    affines = nifti_affines(Path(path))
    if affines is None:
        return None
    qcode, scode, q, s = affines
    if qcode <= 0 or scode <= 0 or np.allclose(q, s, atol=TOLERANCE_MM):
        return None
    used = _image_affine_ras(image)
    q_err, s_err = float(np.abs(used - q).max()), float(np.abs(used - s).max())
    which = "sform" if s_err < q_err else "qform"
    return (f"the NIfTI header's qform (code {qcode}) and sform (code {scode}) disagree: {_how_they_differ(q, s)}. "
            f"Read as ITK and 3D Slicer read it, with the {which}; if the other is right, fix the header (for example "
            "with nibabel set_qform/set_sform) and analyse again")
