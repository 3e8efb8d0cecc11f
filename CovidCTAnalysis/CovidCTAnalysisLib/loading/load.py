"""``load_ct``: read a CT from NIfTI, NRRD, MHA/MHD or a DICOM series folder and check it.

Files are read with SimpleITK (LPS geometry kept); folders go to
``dicom_series.load_dicom_series`` (series choice, sorting, Modality check).
Every loaded image then passes ``checks.check_ct_image``; anything that
cannot be analysed raises :class:`InputError` naming the value and what was
expected.
"""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from CovidCTAnalysisLib.errors import InputError
from CovidCTAnalysisLib.loading.checks import check_ct_image, check_voxel_count
from CovidCTAnalysisLib.loading.coverage import thick_slice_note
from CovidCTAnalysisLib.loading.hu_scale import to_hounsfield
from CovidCTAnalysisLib.loading.nifti_xform import qform_sform_note
from CovidCTAnalysisLib.loading.volume import CTVolume

# suffix (lower case) -> format name recorded in CTVolume.source_format
FORMATS: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mha",
}


def file_format(path: Path) -> str | None:
    """Format name for a file path by its suffix, or None when unsupported."""
    name = path.name.lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return None


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32/float64


def _nifti_layout(header: bytes) -> tuple[int, int, np.dtype | None] | None:
    """(vox_offset, data bytes, float dtype or None) of a NIfTI-1/2 header, or None if it is not NIfTI."""
    for endian in ("<", ">"):
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            vox_offset = struct.unpack(endian + "f", header[108:112])[0]
        elif len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            vox_offset = struct.unpack(endian + "q", header[168:176])[0]
        else:
            continue
        n = 1
        for d in dims[1:1 + max(0, min(int(dims[0]), 7))]:
            n *= max(int(d), 1)
        ftype = _NIFTI_FLOAT_TYPES.get(int(datatype))
        dtype = np.dtype(endian + ftype) if ftype else None
        return int(vox_offset), n * max(int(bitpix), 0) // 8, dtype
    return None


class _NonFiniteCounter:
    """Counts NaN/inf in a stream of float bytes (chunks need not align with values)."""

    def __init__(self, dtype: np.dtype | None, skip: int) -> None:
        self.dtype, self.skip, self.rest, self.count = dtype, skip, b"", 0

    def feed(self, data: bytes) -> None:
        if self.dtype is None:
            return
        if self.skip:
            cut = min(self.skip, len(data))
            data, self.skip = data[cut:], self.skip - cut
        data = self.rest + data
        usable = len(data) - len(data) % self.dtype.itemsize
        self.rest = data[usable:]
        if usable:
            self.count += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:usable], dtype=self.dtype))))


# Hand-written because no library does it: SimpleITK silently zero-fills a truncated NIfTI.
def _check_nifti_complete(path: Path) -> None:
    """Check what ITK does not: truncation (ITK zero-fills it) and NaN/inf (ITK's NIfTI reader sets them to 0).

    One streaming pass over the (decompressed) data; the header gives the length and type.
    """
    gz = path.name.lower().endswith(".gz")
    decomp = zlib.decompressobj(wbits=31) if gz else None
    head = b""
    total = 0
    counter: _NonFiniteCounter | None = None
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                out = decomp.decompress(chunk) if decomp else chunk
                if counter is None:
                    head += out
                    if len(head) < 540 and not (decomp and decomp.eof):
                        total += len(out)
                        continue
                    layout = _nifti_layout(head)
                    if layout is None:
                        raise InputError(f"input image {path} does not start with a NIfTI-1/2 header; expected a "
                                         "NIfTI image")
                    vox_offset, n_bytes, dtype = layout
                    counter = _NonFiniteCounter(dtype, vox_offset)
                    total += len(out)
                    counter.feed(head)
                    head = b""
                else:
                    total += len(out)
                    counter.feed(out)
                if decomp and decomp.eof:
                    break
    except zlib.error as e:
        raise InputError(f"input image {path} is a corrupt gzip stream ({e}); expected a complete .nii.gz") from e
    if counter is None:
        layout = _nifti_layout(head)
        if layout is None:
            raise InputError(f"input image {path} does not start with a NIfTI-1/2 header; expected a NIfTI image")
        vox_offset, n_bytes, dtype = layout
        counter = _NonFiniteCounter(dtype, vox_offset)
        counter.feed(head)
    complete = decomp.eof if decomp else True
    expected = vox_offset + n_bytes
    if not complete or total < expected:
        raise InputError(f"input image {path} is truncated: it holds {total} bytes"
                         f"{' and its gzip stream ends early' if not complete else ''}, the header requires "
                         f"{expected}; expected a complete NIfTI file (re-export or re-download it)")
    if counter.count:
        raise InputError(f"image {path} holds {counter.count} NaN/infinite voxel value(s); expected finite HU "
                         "everywhere")


def read_image_file(path: Path, what: str = "image") -> sitk.Image:
    """Read one image file with SimpleITK; empty, truncated or corrupt files raise InputError."""
    if not path.exists():
        raise InputError(f"{what} {path} does not exist; expected a NIfTI/NRRD/MHA file or a DICOM folder")
    if path.stat().st_size == 0:
        raise InputError(f"{what} {path} is empty (0 bytes); expected a NIfTI/NRRD/MHA image")
    check = None
    if file_format(path) == "nifti":
        # zlib, numpy and ITK release the GIL: the check runs beside the read, on the other core
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nifti-check")
        check = pool.submit(_check_nifti_complete, path)
        pool.shutdown(wait=False)
    try:
        header = sitk.ImageFileReader()
        header.SetFileName(str(path))
        header.ReadImageInformation()  # size from the header: a huge scan is refused before its pixels are read
        check_voxel_count(header.GetSize(), f"{what} {path}")
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        if check is not None:
            check.result()  # its message (truncated, not NIfTI) is the clearer one
        first = str(e).strip().splitlines()
        detail = next((ln.strip() for ln in first if ln.strip() and "sitk::ERROR" in ln), first[-1] if first else "")
        raise InputError(f"{what} {path} ({path.stat().st_size} bytes) could not be read: it is truncated or "
                         f"corrupt ({detail[:200]}); expected a complete NIfTI/NRRD/MHA image") from e
    if check is not None:
        check.result()
    return image


def _as_analysis_type(image: sitk.Image) -> sitk.Image:
    """Keep integer HU as they are; store floating point as float32 (half the memory of float64)."""
    if image.GetPixelID() == sitk.sitkFloat64:
        return sitk.Cast(image, sitk.sitkFloat32)
    return image


def load_ct(path: str | Path, series_uid: str | None = None, *,
            eight_bit_window: tuple[float, float] | None = None) -> CTVolume:
    """Load and check a CT volume.

    ``path`` is a ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` file or a
    DICOM series folder; ``series_uid`` picks one series in a folder holding several.
    ``eight_bit_window`` (training only): the caller KNOWS the file is a 0-255 export of this HU window (as
    the dataset's authors document for the Radiopaedia cases of COVID-19-CT-Seg), so it is mapped back to HU
    instead of being refused as an 8-bit export of unknown window.
    Raises :class:`InputError` for 2-D images, non-CT DICOM, empty/truncated files,
    constant volumes, NaN, absurd spacing and volumes too small to hold lungs.

    >>> vol = load_ct("chest.nii.gz")          # doctest: +SKIP
    >>> vol.image.GetSize(), vol.source_format  # doctest: +SKIP
    ((512, 512, 300), 'nifti')
    """
    path = Path(path).expanduser()
    if path.is_dir():
        from CovidCTAnalysisLib.loading.dicom_series import load_dicom_series

        volume = load_dicom_series(path, series_uid)
        image = _as_analysis_type(volume.image)
        if image is not volume.image:
            volume = CTVolume(image=image, path=volume.path, source_format=volume.source_format,
                              dicom=volume.dicom, notes=volume.notes)
        check_ct_image(volume.image, where=f"DICOM series in {path}")
        return _in_hounsfield(volume, f"DICOM series in {path}", eight_bit_window)
    if series_uid is not None:
        raise InputError(f"--series-uid {series_uid} was given but {path} is a file, not a DICOM folder; "
                         "expected a folder of DICOM files (or drop --series-uid)")
    fmt = file_format(path)
    if path.exists() and fmt is None:
        if path.suffix.lower() in (".dcm", ".ima", ""):
            raise InputError(f"{path} looks like a single DICOM file; pass the folder holding the whole series")
        raise InputError(f"{path} has an unsupported file type {path.suffix!r}; expected one of "
                         f"{sorted(FORMATS)} or a DICOM series folder")
    image = _as_analysis_type(read_image_file(path, "input image"))
    check_ct_image(image, where=str(path))
    notes = (qform_sform_note(path, image),) if fmt == "nifti" else ()
    volume = CTVolume(image=image, path=path.resolve(), source_format=fmt or "unknown", notes=tuple(n for n in notes if n))
    return _in_hounsfield(volume, str(path), eight_bit_window)


def _in_hounsfield(volume: CTVolume, where: str, eight_bit_window: tuple[float, float] | None = None) -> CTVolume:
    """``volume`` in HU (``hu_scale``: a lost -1024 intercept corrected, a documented 8-bit window mapped back,
    other non-HU scales refused), with notes on what was corrected and on thick slices (``coverage``)."""
    image, hu_note = to_hounsfield(volume.image, where, eight_bit_window)
    notes = tuple(n for n in (hu_note, thick_slice_note(image)) if n)
    if not notes:
        return volume
    return replace(volume, image=image, notes=(*volume.notes, *notes))
