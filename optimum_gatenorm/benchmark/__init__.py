"""Speed: measured throughput (`throughput`), the analytical cost model (`cost_model`), and planning a speed-up
from measured attention time shares (`planning`).

Import from the submodules, or the public names from `optimum_gatenorm`.
"""
