"""Evaluation: model loading (`loading`), perplexity (`perplexity`), criteria sweeps (`compare`), lm-eval (`lm_eval`),
and all of one model's in one call (`suite`, what `optimum-cli gatenorm eval` runs).

Import from the submodules, or the public names from `optimum_gatenorm`.
"""
