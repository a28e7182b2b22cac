"""One timed run through llama-cpp-python: prefill of a prompt, then greedy decode from a fresh KV cache."""

from __future__ import annotations

import time

import numpy as np


def next_token(llm) -> int:
    # Without logits_all, llama-cpp-python keeps no scores: read the last position's logits from the context.
    return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))


def time_once(llm, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    llm.reset()  # the next eval drops the whole KV cache (kv_cache_seq_rm from position 0)
    start = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - start
    token = next_token(llm)
    start = time.perf_counter()
    for _ in range(new_tokens):
        llm.eval([token])
        token = next_token(llm)
    decode = time.perf_counter() - start
    return prefill, new_tokens / decode
