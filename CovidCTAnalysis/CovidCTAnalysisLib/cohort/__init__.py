"""Cohorts: ``covidct batch`` over many scans (a face, beside ``pipeline`` and ``cli``).

``discover`` finds the scans and gives them stable ids, ``settings`` keeps ``batch.json`` and refuses to mix
runs, ``runner`` analyses one scan into a temp folder and moves it in with its ``status.json``, ``engines``
run the scans in-process or on Dask, ``summary`` and ``report_html`` turn the per-scan files into
``summary.csv``/``summary.parquet`` and ``report.html``, and ``batch`` ties them together.
"""
