"""Loading: a CT file or DICOM series folder in, a checked ``CTVolume`` in HU out (refusals with clear messages).

A foundation wing: imports only the basics (``constants``, ``errors``, ``progress``).
"""
