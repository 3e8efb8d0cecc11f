"""Atomic writing of the analysis outputs.

Everything is written into a hidden temp folder beside ``--output-dir`` and
moved in only when every file is complete, so an error leaves the output folder
exactly as it was. An existing non-empty output folder is refused unless
``force``; with ``force`` our files are replaced one by one (each ``os.replace``
is atomic) and files we did not write are left alone.

Files: ``segmentation.seg.nrrd`` (Slicer segmentation, written with slicerio),
``labelmap.nii.gz`` (input grid), ``report.json``, ``preview.png`` and, for DICOM
input, ``segmentation.dcm`` (DICOM SEG).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CovidCTAnalysisLib import files
from CovidCTAnalysisLib.constants import LABEL_NAMES, TERMINOLOGY
from CovidCTAnalysisLib.errors import OutputError
from CovidCTAnalysisLib.results.interrupts import deferred_stops, pause_point

SEG_NRRD = "segmentation.seg.nrrd"
LABELMAP_NII = "labelmap.nii.gz"
REPORT_JSON = "report.json"
PREVIEW_PNG = "preview.png"
DICOM_SEG = "segmentation.dcm"
OUTPUT_FILES = (SEG_NRRD, LABELMAP_NII, REPORT_JSON, PREVIEW_PNG, DICOM_SEG)

TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def _probe_writable(folder: Path) -> None:
    """Create and delete a file in ``folder``: the only test that sees read-only mounts, ACLs and root alike."""
    try:
        fd, name = tempfile.mkstemp(prefix=".covidct-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise OutputError(f"cannot write into {folder} ({e.strerror or e}); choose a writable --output-dir") from e


def check_output_dir(output_dir: str | Path, force: bool = False, inputs: tuple[Path, ...] = ()) -> Path:
    """Refuse an output folder we may not write, before any heavy work.

    Refused: an existing file; a non-empty folder without ``force``; a folder that
    is, or lies inside or above, one of ``inputs`` (never write over the input), or
    lies inside an input folder (a DICOM folder: our files would join its series);
    a folder or parent we cannot write (probed by creating a file there).
    """
    out = Path(output_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise OutputError(f"--output-dir {out} is an existing file; expected a folder (new or empty)")
    for inp in inputs:
        inp = Path(inp).expanduser().resolve()
        if inp == out or out in inp.parents:
            raise OutputError(f"--output-dir {out} contains the input {inp}; choose a separate folder so the input "
                              "is never overwritten")
        if inp.is_dir() and inp in out.parents:
            raise OutputError(f"--output-dir {out} lies inside the input folder {inp}; choose a folder outside it, "
                              "so our files never mix with the input's DICOM files")
    if out.is_dir() and any(out.iterdir()) and not force:
        present = sorted(p.name for p in out.iterdir())[:5]
        raise OutputError(f"--output-dir {out} exists and is not empty ({', '.join(present)}...); pass --force to "
                          "replace the analysis files in it, or choose another folder")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    _probe_writable(parent)
    if out.is_dir():
        _probe_writable(out)
    return out


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it, racing other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return 0o022


def _write_failed(e: OSError, folder: Path) -> OutputError:
    """One clear message for a failed write (full disk, quota, I/O error), naming the free space left."""
    free = ""
    with contextlib.suppress(OSError):
        free = f"; {shutil.disk_usage(folder).free / 1e6:.0f} MB free there"
    what = errno.errorcode.get(e.errno or 0, "error")
    return OutputError(f"writing the outputs beside {folder} failed: {e.strerror or e} ({what}{free}); nothing was "
                       "written to the output folder; free some space or choose another --output-dir")


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside ``output_dir``; on success move its files in, on error delete it.

    A failed write (``OSError``: full disk, quota) becomes :class:`OutputError`. SIGINT/SIGTERM are held
    while files are moved in and while a failed run cleans up (``interrupts.deferred_stops``), so the
    folder ends either as it was or complete.

    >>> with atomic_output_dir("out") as tmp:          # doctest: +SKIP
    ...     (tmp / "report.json").write_text("{}")
    """
    out = check_output_dir(output_dir, force)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # removed again on error
    try:
        tmp = files.temp_dir_beside(out)  # named like run_lock.temp_prefix(out), which cleans up after crashes
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would otherwise become the output folder's mode
    except OSError as e:
        raise _write_failed(e, out.parent) from e
    try:
        try:
            yield tmp
        except OSError as e:
            raise _write_failed(e, out.parent) from e
        pause_point("commit")
    except BaseException:
        with deferred_stops():
            shutil.rmtree(tmp, ignore_errors=True)
            for folder in created:  # innermost first
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise
    with deferred_stops():
        try:
            if not out.exists():
                os.replace(tmp, out)
                return
            check_output_dir(out, force)  # someone may have filled it meanwhile
            written = {p.name for p in tmp.iterdir()}
            for p in sorted(tmp.iterdir()):
                os.replace(p, out / p.name)
                pause_point("commit-move")
            for stale in OUTPUT_FILES:  # a previous run's file we did not rewrite would contradict the new report
                if stale not in written and (out / stale).is_file():
                    (out / stale).unlink()
        except OSError as e:
            raise _write_failed(e, out.parent) from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _ijk_to_lps(image: sitk.Image) -> np.ndarray:
    d = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = d * np.array(image.GetSpacing(), dtype=float)[None, :]
    m[:3, 3] = image.GetOrigin()
    return m


def terminology_entry(label: int) -> dict:
    """Slicer terminology entry (slicerio dict) for one of our labels, from ``constants.TERMINOLOGY``."""
    t = TERMINOLOGY[label]

    def code(c):  # constants keep (code value, scheme, meaning); Slicer wants scheme^code^meaning
        return [c[1], c[0], c[2]]

    entry = {"contextName": TERMINOLOGY_CONTEXT, "category": code(t.category), "type": code(t.type)}
    if t.anatomic_region is not None:
        entry["anatomicContextName"] = ANATOMIC_CONTEXT
        entry["anatomicRegion"] = code(t.anatomic_region)
    return entry


def write_seg_nrrd(labelmap: sitk.Image, path: str | Path) -> Path:
    """Write a Slicer ``.seg.nrrd`` (one layer, label values 1/2/3) with names, colours and terminology."""
    import slicerio

    arr = sitk.GetArrayViewFromImage(labelmap)
    segments = []
    for label, name in LABEL_NAMES.items():
        segments.append({
            "id": f"Segment_{label}",
            "labelValue": label,
            "layer": 0,
            "name": name,
            "color": [c / 255.0 for c in TERMINOLOGY[label].color_rgb],
            "terminology": terminology_entry(label),
        })
    seg = {
        # (z,y,x) -> (i,j,k) as a view: pynrrd writes it in Fortran order, i.e. our C order, with no copy
        "voxels": (arr if arr.dtype == np.uint8 else arr.astype(np.uint8)).transpose(2, 1, 0),
        "ijkToLPS": _ijk_to_lps(labelmap),
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "segments": segments,
    }
    slicerio.write_segmentation(str(path), seg, compression_level=1)
    return Path(path)


def write_labelmap(labelmap: sitk.Image, path: str | Path) -> Path:
    """Write the uint8 labelmap (NIfTI, compressed) on its own grid."""
    try:
        sitk.WriteImage(sitk.Cast(labelmap, sitk.sitkUInt8), str(path), True)
    except RuntimeError as e:  # ITK reports a full disk as a RuntimeError; callers handle OSError
        detail = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        raise OSError(errno.EIO, f"could not write {Path(path).name} ({detail[:200]})") from e
    return Path(path)


def write_json(obj: dict, path: str | Path) -> Path:
    """Write a JSON document (UTF-8, indented); NaN/inf are refused, not written (``files.write_json``)."""
    return files.write_json(path, obj)
