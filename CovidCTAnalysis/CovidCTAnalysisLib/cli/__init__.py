"""The ``covidct`` command line: a face over ``pipeline`` and the wings below it."""
