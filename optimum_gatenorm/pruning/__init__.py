"""Pruning: what to remove (`configuration`), choosing it (`pruner`), and fitting what replaces a removed sublayer
(`replacement`). The surgery itself, which the loader replays, lives in `checkpoints.structure`.

Import from the submodules, or the public names from `optimum_gatenorm`; this `__init__` imports nothing.
"""
