"""Small helpers every stage may use: atomic files, name-hash splits, devices and processes.

Nothing here imports a stage package; every stage may import from here.
"""
