"""Cross-check at the issue's setting: 8,192 tokens of Pride and Prejudice, short windows.

    python benchmarks/issue_table_check.py [--window 256]

The issue that asked for the criterion study reported, on SmolLM2-135M-Instruct and 8k tokens of *Pride and
Prejudice*, an unpruned perplexity of 26.9 and gate_norm 41.3 / 315.4 at k = 4 / 8, random median 37.0 / 50.5,
cosine 35.6 / 42.7. Our studies use 2,048-4,096 tokens and 512-1,024-token windows (lower perplexity: more
context). This script measures the same points (plus the default criterion) with `compare` at 8,192 tokens and a
short window, to show whether the difference is the setting or something else. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from harness.texts import austen
from transformers import AutoTokenizer

from optimum_gatenorm import DEFAULT_CRITERION, load_pruned, resolve_model
from optimum_gatenorm.criteria import Calibration
from optimum_gatenorm.evaluation.compare import CompareConfig, compare_criteria
from optimum_gatenorm.text import read_text


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=8192)
    args = parser.parse_args()
    path = resolve_model("smollm2-135m")
    model, tokenizer = load_pruned(path), AutoTokenizer.from_pretrained(path)
    calibration = Calibration.from_files([austen("sensesensibility")], tokenizer, num_samples=32, length=128)
    start = time.perf_counter()
    result = compare_criteria(
        model,
        tokenizer,
        read_text(austen("prideprejudice")),
        CompareConfig(
            criteria=[DEFAULT_CRITERION, "gate_norm", "cosine", "random"],
            num_layers=[0, 4, 8],
            window=args.window,
            max_tokens=args.max_tokens,
        ),
        calibration=calibration,
        progress=True,
    )
    summary = {
        "settings": {"window": args.window, "max_tokens": args.max_tokens, "tokens": result.num_tokens},
        "unpruned": round(result.baseline_perplexity, 2),
        "seconds": round(time.perf_counter() - start),
    }
    for criterion in (DEFAULT_CRITERION, "gate_norm", "cosine", "random"):
        curve = result.curve(criterion)
        summary[criterion] = {k: round(statistics.median(curve[k]), 1) for k in (4, 8)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
