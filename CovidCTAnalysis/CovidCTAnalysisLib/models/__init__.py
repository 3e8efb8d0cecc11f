"""Models: network builders, model folders and their metadata, the registry, preprocessing transforms, devices.

A foundation wing: imports only the basics. Training imports the same builders and transforms.
"""
