"""Inference steps: classify a scan, segment it, and post-process the labels.

A step wing: imports the foundations (``loading``, ``models``) and the basics.
"""
