"""Throughput study: SmolLM2-135M on onnxruntime (CPU by default), k in {0, 4, 8, 12} of 30 sublayers removed.

    python benchmarks/throughput_study.py [--provider cpu] [--new-tokens 32] [--runs 5] [--output-dir benchmarks/throughput]

Prunes the built-in model with the default criterion (gate_norm, layer 0 protected), exports each k to ONNX
(cached under $OPTIMUM_GATENORM_CACHE/study), then runs `optimum-cli gatenorm benchmark`'s measurement (the
same `run_benchmark`) for each k > 0 against k = 0 at prompt lengths 128 and 1024, batch 1. Writes one JSON per
k, `speedup.png` (measured prefill and decode speed-up vs k, against the cost-model bounds) and `summary.md`.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from optimum_gatenorm import GateNormConfig, GateNormPruner, export_onnx, resolve_model
from optimum_gatenorm.benchmark import BenchmarkSettings, run_benchmark
from optimum_gatenorm.models import cache_dir


KS = (0, 4, 8, 12)


def exported(k: int, dtype: str) -> Path:
    target = cache_dir() / "study" / f"smollm2-135m-k{k}-{dtype}-onnx"
    if not (target / "model.onnx").is_file():
        model, _ = GateNormPruner.from_pretrained(resolve_model("smollm2-135m")).prune(GateNormConfig(num_layers=k))
        if dtype == "fp16":
            model.to(torch.float16)
        export_onnx(model, target, device="cuda" if dtype == "fp16" else "cpu", dtype=dtype, overwrite=True)
    return target


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--prompt-lengths", default="128,1024")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output-dir", default="benchmarks/throughput")
    args = parser.parse_args()

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = "fp16" if args.provider == "cuda" else "fp32"
    dirs = {k: exported(k, dtype) for k in KS}
    settings = BenchmarkSettings(
        batch_sizes=[1],
        prompt_lengths=[int(p) for p in args.prompt_lengths.split(",")],
        new_tokens=args.new_tokens,
        warmup=args.warmup,
        runs=args.runs,
        provider=args.provider,
    )
    rows = []
    for k in KS[1:]:
        result = run_benchmark(dirs[k], dirs[0], settings, progress=True)
        (out / f"k{k}.json").write_text(result.to_json() + "\n")
        print(result.format_table(), flush=True)
        for row in result.summary:
            rows.append(
                {
                    "k": k,
                    "prompt_length": row["prompt_length"],
                    "prefill_speedup": row["speedup"]["prefill_s"],
                    "prefill_ideal": row["ideal"]["prefill_s"],
                    "decode_speedup": row["speedup"]["decode_tokens_per_s"],
                    "decode_ideal": row["ideal"]["decode_tokens_per_s"],
                    "baseline_prefill_s": row["baseline"]["prefill_s"]["median"],
                    "candidate_prefill_s": row["candidate"]["prefill_s"]["median"],
                    "baseline_decode_tps": row["baseline"]["decode_tokens_per_s"]["median"],
                    "candidate_decode_tps": row["candidate"]["decode_tokens_per_s"]["median"],
                    "prefill_range": [row["candidate"]["prefill_s"]["min"], row["candidate"]["prefill_s"]["max"]],
                    "decode_range": [
                        row["candidate"]["decode_tokens_per_s"]["min"],
                        row["candidate"]["decode_tokens_per_s"]["max"],
                    ],
                }
            )
    (out / "summary.json").write_text(json.dumps({"machine": result.machine, "rows": rows}, indent=2) + "\n")
    lines = [
        f"Machine: {platform.platform()}, {torch.get_num_threads()} threads, provider {args.provider}; command: "
        f"`python benchmarks/throughput_study.py --provider {args.provider} --new-tokens {args.new_tokens} "
        f"--runs {args.runs} --warmup {args.warmup}`",
        "",
        "| k | prompt | prefill s: k=0 -> k | prefill speed-up (ideal) | decode tok/s: k=0 -> k | decode speed-up (ideal) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['k']} | {r['prompt_length']} | {r['baseline_prefill_s']:.4f} -> {r['candidate_prefill_s']:.4f} | "
            f"{r['prefill_speedup']:.3f} ({r['prefill_ideal']:.3f}) | {r['baseline_decode_tps']:.1f} -> "
            f"{r['candidate_decode_tps']:.1f} | {r['decode_speedup']:.3f} ({r['decode_ideal']:.3f}) |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, out / "speedup.png")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=120)
    for ax, phase in zip(axes, ("prefill", "decode"), strict=True):
        for length in sorted({r["prompt_length"] for r in rows}):
            mine = [r for r in rows if r["prompt_length"] == length]
            ks = [0] + [r["k"] for r in mine]
            (line,) = ax.plot(
                ks, [1.0] + [r[f"{phase}_speedup"] for r in mine], marker="o", label=f"measured, {length}"
            )
            ax.plot(ks, [1.0] + [r[f"{phase}_ideal"] for r in mine], linestyle="--", color=line.get_color(),
                    label=f"cost-model bound, {length}")  # fmt: skip
        ax.set_xlabel("attention sublayers removed (of 30)")
        ax.set_ylabel(f"{phase} speed-up vs k = 0")
        ax.set_title(f"SmolLM2-135M, onnxruntime: {phase}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
