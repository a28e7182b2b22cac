"""Throughput study: SmolLM2-135M on onnxruntime (CPU by default): measured speed-up vs k, the measured-share bound,
the analytical bound, and a check of `prune --target-speedup`'s prediction, all from one run.

    python benchmarks/throughput_study.py [--provider cpu] [--new-tokens 32] [--runs 5] [--warmup 1] \
        [--ks 4,8,12] [--targets 1.1,1.2] [--prompt-lengths 128,1024] [--output-dir benchmarks/throughput]

1. Builds the variants with `optimum_gatenorm.speed.planning.prepare_variant` (k sublayers removed, ONNX export; cached
   under $OPTIMUM_GATENORM_CACHE/study): k = 0, the asked ks and k = L-1 = 29.
2. Timed ablation: `run_benchmark` of k = 29 against k = 0 at each prompt length (batch 1) gives the measured
   attention shares (`attention_shares_from_benchmark`, saved as `shares.json`, the file `prune --shares` reads),
   hence the bound ideal(k) = T0 / (T0 - k t_attn) for every k.
3. Each asked k against k = 0 (interleaved, same settings): measured speed-up, bound, efficiency = measured /
   bound, and the cost model's analytical bound (prefill: FLOPs ratio; decode: bytes ratio at the mean context).
4. Planning check: for each target and prompt length, the k that `plan_num_layers(target, phase="both")` picks from
   the shares of step 2; a k not measured in step 3 is measured now; predicted vs measured speed-ups.

Writes `shares.json`, one raw `run_benchmark` JSON per comparison (`k{k}.json`, `k{k}-p{prompt}.json` for the
planning-only ones), `summary.json`, `summary.md` and `speedup.png` into the output directory.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from harness.writers import write_json

from optimum_gatenorm import GateNormPruner, resolve_model
from optimum_gatenorm.checkpoints.models import cache_dir
from optimum_gatenorm.speed.measuring import attention_shares_from_benchmark, prepare_variant
from optimum_gatenorm.speed.planning import plan_num_layers, predict_speedup
from optimum_gatenorm.speed.throughput import BenchmarkSettings, run_benchmark


MODEL = "smollm2-135m"
PHASES = (("prefill", "prefill_s"), ("decode", "decode_s_per_token"))


def exported(k: int, provider: str) -> Path:
    dtype = "fp16" if provider == "cuda" else "fp32"
    target = cache_dir() / "study" / f"{MODEL}-k{k}-{dtype}-onnx"
    if not (target / "model.onnx").is_file():
        print(f"exporting k = {k} to {target}", flush=True)
        prepare_variant(MODEL, k, target, provider=provider, overwrite=True)
    return target


def pair_ratios(result, prompt: int, attr: str) -> list[float]:
    """Min and max of the per-round speed-ups (baseline / candidate time of the same interleaved round)."""
    runs = {(r.model, r.run): getattr(r, attr) for r in result.runs if r.prompt_length == prompt}
    ratios = [runs[("baseline", i)] / runs[("candidate", i)] for i in range(result.settings["runs"])]
    return [min(ratios), max(ratios)]


def measured(result, prompt: int) -> dict:
    """Median speed-ups (baseline median time / candidate median time), per-round ranges, the analytical bound."""
    out = {}
    row = next(r for r in result.summary if r["prompt_length"] == prompt)
    analytical = {"prefill": row["ideal"]["prefill_s"], "decode": row["ideal"]["decode_tokens_per_s"]}
    for phase, attr in PHASES:
        times = {
            side: statistics.median(
                getattr(r, attr) for r in result.runs if r.model == side and r.prompt_length == prompt
            )
            for side in ("baseline", "candidate")
        }
        out[phase] = {
            "speedup": times["baseline"] / times["candidate"],
            "range": pair_ratios(result, prompt, attr),
            "baseline_s": times["baseline"],
            "candidate_s": times["candidate"],
            "analytical": analytical[phase],
        }
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--prompt-lengths", default="128,1024")
    parser.add_argument("--ks", default="4,8,12")
    parser.add_argument("--targets", default="1.1,1.2")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output-dir", default="benchmarks/throughput")
    args = parser.parse_args()
    started = time.perf_counter()
    load_before = os.getloadavg()  # the machine may be shared: its load says how much to trust the timings

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = [int(p) for p in args.prompt_lengths.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    targets = [float(t) for t in args.targets.split(",")]
    config = GateNormPruner.from_pretrained(resolve_model(MODEL)).config
    num_layers = config.num_hidden_layers
    ablated = num_layers - 1
    dirs = {k: exported(k, args.provider) for k in [0, *ks, ablated]}

    def settings(lengths):
        return BenchmarkSettings(
            batch_sizes=[1],
            prompt_lengths=lengths,
            new_tokens=args.new_tokens,
            warmup=args.warmup,
            runs=args.runs,
            provider=args.provider,
        )

    def compare(k, lengths, name):
        print(f"k = {k} against k = 0, prompts {lengths}", flush=True)
        result = run_benchmark(dirs[k], dirs[0], settings(lengths), progress=True)
        (out / name).write_text(result.to_json() + "\n")
        print(result.format_table(), flush=True)
        return result

    # Timed ablation: the measured shares and the bound.
    ablation = compare(ablated, prompts, f"k{ablated}.json")
    shares = attention_shares_from_benchmark(ablation, model=MODEL, config=config, ablated=ablated)
    shares.save(out / "shares.json")

    def row(k, prompt, result):
        values = measured(result, prompt)
        for phase, _ in PHASES:
            bound = shares.speedup(k, phase, 1, prompt)
            values[phase]["bound"] = bound
            values[phase]["efficiency"] = values[phase]["speedup"] / bound
        return {"k": k, "prompt_length": prompt, **values}

    rows = [row(ablated, p, ablation) for p in prompts]
    for k in ks:
        result = compare(k, prompts, f"k{k}.json")
        rows += [row(k, p, result) for p in prompts]

    # Planning check: the k picked for each target from the shares, measured if not already.
    checks = []
    for target in targets:
        for prompt in prompts:
            try:
                k = plan_num_layers(target, config, phase="both", batch=1, context=prompt, shares=shares)
            except ValueError as error:  # refused: part of the check
                checks.append({"target": target, "prompt_length": prompt, "k": None, "refused": str(error)})
                continue
            try:
                analytical_k = plan_num_layers(target, config, phase="both", batch=1, context=prompt)
            except ValueError:
                analytical_k = None
            done = next((r for r in rows if r["k"] == k and r["prompt_length"] == prompt), None)
            if done is None:
                dirs[k] = exported(k, args.provider)
                done = row(k, prompt, compare(k, [prompt], f"k{k}-p{prompt}.json"))
                rows.append(done)
            checks.append(
                {
                    "target": target,
                    "prompt_length": prompt,
                    "k": k,
                    "k_analytical": analytical_k,
                    "predicted": {p: shares.speedup(k, p, 1, prompt) for p, _ in PHASES},
                    "measured": {p: done[p]["speedup"] for p, _ in PHASES},
                    "measured_range": {p: done[p]["range"] for p, _ in PHASES},
                    "reached": all(done[p]["speedup"] >= target for p, _ in PHASES),
                }
            )
    rows.sort(key=lambda r: (r["k"], r["prompt_length"]))
    minutes = (time.perf_counter() - started) / 60
    command = (
        f"python benchmarks/throughput_study.py --provider {args.provider} --new-tokens {args.new_tokens} "
        f"--runs {args.runs} --warmup {args.warmup} --ks {args.ks} --targets {args.targets} "
        f"--prompt-lengths {args.prompt_lengths}"
    )
    machine = {
        **ablation.machine,
        "cpu_count": os.cpu_count(),
        "date": date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_1_5_15min": {"start": load_before, "end": os.getloadavg()},
    }
    summary = {
        "command": command,
        "machine": machine,
        "minutes": minutes,
        "shares": shares.to_dict(),
        "rows": rows,
        "target_checks": checks,
    }
    write_json(out / "summary.json", summary, indent=2)
    lines = markdown(summary, shares)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, checks, shares, config, args.new_tokens, out / "speedup.png")


def _load(values) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def _r(values) -> str:
    return f"{values[0]:.2f}-{values[1]:.2f}"


def markdown(summary: dict, shares) -> list[str]:
    m = summary["machine"]
    load = m["load_average_1_5_15min"]
    lines = [
        f"`{summary['command']}` ({m['date']}, {m['cpu_count']} CPU cores, {m['platform']}, onnxruntime "
        f"{m.get('onnxruntime')}, torch {m['torch']}; {summary['minutes']:.1f} min; load average (1/5/15 min) "
        f"{_load(load['start'])} at the start, {_load(load['end'])} at the end)",
        "",
        "Attention share of the measured time (timed ablation: k = 0 against k = "
        f"{shares.max_k}, median of {shares.runs} interleaved runs):",
        "",
        "| prompt | prefill T0 -> T29 (s) | prefill share | decode T0 -> T29 (ms/token) | decode share |",
        "| --- | --- | --- | --- | --- |",
    ]
    for prompt in sorted({c.context for c in shares.cells}):
        pre = next(c for c in shares.cells if c.phase == "prefill" and c.context == prompt)
        dec = next(c for c in shares.cells if c.phase == "decode" and c.context == prompt)
        lines.append(
            f"| {prompt} | {pre.T0_s:.4f} -> {pre.T_ablated_s:.4f} | {pre.share:.0%} | {dec.T0_s * 1e3:.1f} -> "
            f"{dec.T_ablated_s * 1e3:.1f} | {dec.share:.0%} |"
        )
    lines += [
        "",
        "Speed-up over k = 0: measured (median; per-round min-max), measured-share bound, efficiency = measured / "
        "bound, analytical cost-model bound:",
        "",
        "| k | prompt | prefill measured (range) | bound | eff. | analytical | decode measured (range) | bound | eff. "
        "| analytical |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["rows"]:
        cells = []
        for phase in ("prefill", "decode"):
            v = r[phase]
            cells.append(
                f"{v['speedup']:.3f} ({_r(v['range'])}) | {v['bound']:.3f} | {v['efficiency']:.0%} | "
                f"{v['analytical']:.3f}"
            )
        lines.append(f"| {r['k']} | {r['prompt_length']} | {' | '.join(cells)} |")
    lines += [
        "",
        "`--target-speedup` check (phase both, batch 1): k planned from the measured shares, predicted vs measured "
        "in this run:",
        "",
        "| target | prompt | k (measured shares) | k (analytical) | predicted prefill / decode | measured prefill / "
        "decode | reached |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in summary["target_checks"]:
        if c["k"] is None:
            lines.append(f"| {c['target']:g} | {c['prompt_length']} | refused: {c['refused']} | | | | |")
            continue
        analytical = c["k_analytical"] if c["k_analytical"] is not None else "unreachable"
        lines.append(
            f"| {c['target']:g} | {c['prompt_length']} | {c['k']} | {analytical} | {c['predicted']['prefill']:.3f} / "
            f"{c['predicted']['decode']:.3f} | {c['measured']['prefill']:.3f} / {c['measured']['decode']:.3f} | "
            f"{'yes' if c['reached'] else 'no'} |"
        )
    return lines


def plot(rows, checks, shares, config, new_tokens, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = list(range(shares.max_k + 1))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for ax, (phase, _) in zip(axes, PHASES, strict=True):
        for prompt in sorted({r["prompt_length"] for r in rows}):
            mine = sorted((r for r in rows if r["prompt_length"] == prompt), key=lambda r: r["k"])
            xs = [0] + [r["k"] for r in mine]
            (line,) = ax.plot(xs, [1.0] + [r[phase]["speedup"] for r in mine], "o", label=f"measured, {prompt}")
            color = line.get_color()
            ax.plot(ks, [shares.speedup(k, phase, 1, prompt) for k in ks], "-", color=color, linewidth=1,
                    label=f"measured-share bound, {prompt}")  # fmt: skip
            length = prompt if phase == "prefill" else prompt + new_tokens // 2
            ax.plot(ks, [predict_speedup(k, None, config, phase, 1, length) for k in ks], "--", color=color,
                    linewidth=1, label=f"analytical bound, {prompt}")  # fmt: skip
            planned = [c for c in checks if c["prompt_length"] == prompt and c["k"] is not None]
            ax.plot([c["k"] for c in planned], [c["measured"][phase] for c in planned], "*", color=color,
                    markersize=11, linestyle="none", label=f"--target-speedup k, {prompt}")  # fmt: skip
        for target in sorted({c["target"] for c in checks}):
            ax.axhline(target, color="grey", linewidth=0.6, linestyle=":")
        ax.set_xlabel(f"attention sublayers removed (of {shares.num_attention_layers})")
        ax.set_ylabel(f"{phase} speed-up vs k = 0")
        ax.set_title(f"SmolLM2-135M, onnxruntime {shares.provider}: {phase}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
