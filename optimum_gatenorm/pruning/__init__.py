"""Pruning: what to remove (`configuration`), choosing it (`pruner`), and removing it from a model (`structure`).

Import from the submodules, or the public names from `optimum_gatenorm`; this `__init__` imports nothing, so that
`checkpoints` can use `structure` without loading the pruner.
"""
