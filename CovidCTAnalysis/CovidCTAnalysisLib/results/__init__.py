"""Results: statistics, Dice/HD95, report, outputs written atomically, preview picture and DICOM SEG.

A step wing: imports the foundations and the basics.
"""
