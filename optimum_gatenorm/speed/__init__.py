"""Speed, in two halves. Arithmetic, which builds and times nothing: the analytical cost model (`cost_model`), the
format of measured attention time shares (`shares`) and planning a speed-up from either (`planning`, what
`prune --target-speedup` needs). Measuring: throughput of two models side by side (`throughput`) and attention's
measured share by timed ablation (`measuring`).

Import from the submodules, or the public names from `optimum_gatenorm`.
"""
