"""The DICOM SEG writer as a background job: ``PythonSlicer -m CovidCTAnalysisSlicer.seg_export_job ...``.

Slicer's own process keeps the pydicom it bundles (2.4.4 on Slicer 5.10, already imported by its DICOM
plugins), while highdicom needs pydicom 3. So, like the analysis, the export runs in a fresh Python:
the Slicer process writes the labelmap and the list of source files and reads back one JSON line.
This file imports no slicer, qt or vtk; ``dicom_export.exportDicomSeg`` starts it.

    python -m CovidCTAnalysisSlicer.seg_export_job --labelmap L.nrrd --instances files.txt
        --models models.json --output seg.dcm

stdout: one JSON line, the core's ``SegWriteResult.as_report()``; errors: ``error: ...`` on stderr
and the core's exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULT_PREFIX = "covidct-seg-result "


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seg_export_job", description=__doc__.splitlines()[0])
    parser.add_argument("--labelmap", required=True, type=Path, help="1/2/3 labelmap on the source CT grid")
    parser.add_argument("--instances", required=True, type=Path, help="text file: one source DICOM file per line")
    parser.add_argument("--models", type=Path, help="JSON list of model provenance dicts")
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)

    import SimpleITK as sitk
    from CovidCTAnalysisLib.errors import CovidCTError
    from CovidCTAnalysisLib.loading.dicom_series import dicom_source_from_files
    from CovidCTAnalysisLib.results.dicom_seg import write_dicom_seg

    try:
        files = [Path(line) for line in args.instances.read_text(encoding="utf-8").splitlines() if line.strip()]
        models = json.loads(args.models.read_text(encoding="utf-8")) if args.models else []
        labelmap = sitk.ReadImage(str(args.labelmap))
        result = write_dicom_seg(labelmap, dicom_source_from_files(files), output_path=args.output, models=models)
    except CovidCTError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(RESULT_PREFIX + json.dumps(result.as_report()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
