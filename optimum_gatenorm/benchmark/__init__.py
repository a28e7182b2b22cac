"""Speed: measured throughput (`throughput`), the analytical cost model (`cost_model`), planning a speed-up
from measured attention time shares (`planning`), and the format of those shares (`shares`).

Import from the submodules, or the public names from `optimum_gatenorm`.
"""
