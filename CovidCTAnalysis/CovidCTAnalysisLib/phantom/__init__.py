"""Synthetic chest phantoms with exact truth: anatomy, vessels, lesions, acquisition, and a DICOM series writer.

A foundation wing: imports the basics and ``loading.volume``. For tests, demos and demo training only.
"""
