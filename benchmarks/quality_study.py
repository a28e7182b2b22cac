"""Quality study: perplexity of SmolLM2-135M with k attention sublayers removed, per criterion, on two real texts.

    python benchmarks/quality_study.py [--max-tokens 4096] [--window 1024] [--output-dir benchmarks/quality]

Texts (see benchmarks/harness/texts.py; fetched from Debian and PyPI, cached, not committed):
- evaluation A: Jane Austen, *Pride and Prejudice*;
- evaluation B: the 300 news articles of gensim's Lee corpus;
- calibration for the data-driven criteria: Jane Austen, *Sense and Sensibility* (disjoint from both).

For each evaluation text it runs `compare` (one loaded model, masking in memory) over every criterion, k in
{0, 2, 4, 6, 8, 10, 12}, `random` over 5 seeds, and writes `<text>.json` and `<text>.png` to the output
directory, plus `summary.md` with the tables, scoring times and rank correlations.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
from harness.arguments import make_calibration, study_parser
from harness.texts import austen, lee_news
from transformers import AutoTokenizer

from optimum_gatenorm import load_pruned, resolve_model
from optimum_gatenorm.evaluation.compare import CompareConfig, compare_criteria
from optimum_gatenorm.text import read_text


CRITERIA = ("gate_norm", "gate_norm_head", "gate_norm_folded", "cosine", "attn_norm", "random", "last")
KS = (0, 2, 4, 6, 8, 10, 12)


def main():
    parser = study_parser(__doc__, max_tokens=4096, window=1024, output_dir="benchmarks/quality")
    args = parser.parse_args()

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = resolve_model("smollm2-135m")
    model = load_pruned(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    calibration = make_calibration(tokenizer, austen("sensesensibility"), args)
    texts = {"pride-and-prejudice": austen("prideprejudice"), "lee-news": lee_news()}
    summary = [
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. "
        f"Command: `python benchmarks/quality_study.py --max-tokens {args.max_tokens} --window {args.window} "
        f"--calibration-samples {args.calibration_samples} --calibration-length {args.calibration_length}`.",
        "",
    ]
    for name, text_path in texts.items():
        start = time.perf_counter()
        result = compare_criteria(
            model,
            tokenizer,
            read_text(text_path),
            CompareConfig(criteria=CRITERIA, num_layers=KS, window=args.window, max_tokens=args.max_tokens),
            calibration=calibration,
            model_name="SmolLM2-135M-Instruct",
            text_name=name,
            progress=True,
        )
        (out / f"{name}.json").write_text(result.to_json() + "\n")
        result.plot(out / f"{name}.png", overwrite=True)
        summary += [f"### {name} ({time.perf_counter() - start:.0f} s)", "", "```", result.format_table(), "```", ""]
        gate = result.criteria["gate_norm"]["scoring_seconds"]
        summary += [
            "| criterion | scoring s | x gate_norm | Spearman vs cosine | Spearman vs attn_norm |",
            "| --- | --- | --- | --- | --- |",
        ]
        for criterion, info in result.criteria.items():
            rho = result.spearman[criterion]
            summary.append(
                f"| {criterion} | {info['scoring_seconds']:.4f} | {info['scoring_seconds'] / gate:.1f} | "
                f"{_fmt(rho['cosine'])} | {_fmt(rho['attn_norm'])} |"
            )
        summary.append("")
        print("\n".join(summary[-len(CRITERIA) - 8 :]), flush=True)
    (out / "summary.md").write_text("\n".join(summary) + "\n")
    print(json.dumps({"written": sorted(p.name for p in out.iterdir())}))


def _fmt(value):
    return "n/a" if value is None else f"{value:+.2f}"


if __name__ == "__main__":
    main()
