"""The threshold method: body, airway, lungs split into the patient's left and right, and HU-band lesion candidates.

A foundation wing: needs no model; imports only the basics.
"""
