"""Evaluation: model loading (`loading`), perplexity (`perplexity`), criteria sweeps (`compare`), lm-eval (`lm_eval`).

Import from the submodules, or the public names from `optimum_gatenorm`.
"""
