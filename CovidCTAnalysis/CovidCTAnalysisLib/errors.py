"""Exceptions with messages a user can act on.

Each error names the offending value, what was expected and what to do. The CLI
maps them to exit codes and never leaves partial output behind.
"""

from __future__ import annotations


class CovidCTError(Exception):
    """Base class; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class InputError(CovidCTError):
    """The input image cannot be analysed (wrong kind, corrupt, implausible)."""

    exit_code = 2


class ModelError(CovidCTError):
    """A model is missing, corrupt (sha256 mismatch) or incompatible."""

    exit_code = 3


class OutputError(CovidCTError):
    """Outputs cannot be written (exists without --force, not writable)."""

    exit_code = 4


class DicomSegError(CovidCTError):
    """A DICOM SEG was required but cannot be written."""

    exit_code = 5
