"""The long-context study: retrieval and long-window perplexity per k, and speed at long context.

    python benchmarks/long_context_study.py quality --model smollm2-135m --replacement linear --num-layers 0,2,4,6,8
    python benchmarks/long_context_study.py quality --model gemma3-270m --replacement none --num-layers 0,2,4
    python benchmarks/long_context_study.py speed --model smollm2-135m --num-layers 4,8 --prompt-lengths 1024,4096,8000
    python benchmarks/long_context_study.py tables

`quality` is `optimum-cli gatenorm compare` through the Python API: the default criterion (`cosine_self`) at each k,
each removed set replaced as `--replacement` says (fitted on the 16 x 256 tokens the criterion samples), perplexity
on 4,096-token windows of *Pride and Prejudice* (its first 8,192 tokens; `benchmarks/harness/texts.py` fetches it) with KL
divergence and top-1 agreement to the unpruned model, and the retrieval suite (passkey and multikey, seed 0, depths
0.1 / 0.5 / 0.9, `--cases` per depth) at `--lengths`. Writes `long_context/<model>-<replacement>.json`.

`speed` prunes the model at each k with the defaults (`cosine_self`, `linear`), exports it and the unpruned model to
ONNX and times each pruned export against the unpruned one side by side (`run_benchmark`: interleaved runs, random
prompts of exactly each length, medians). Beside each speed-up: the cost model's bound for the removed layers, the
`--target-speedup` planner's prediction for that k (which counts the cheapest layers first), and the KV-cache bytes
of both models at that length. Writes `long_context/<model>-speed.json`.

`tables` prints the README tables from those files.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from harness.writers import write_json


HERE = Path(__file__).resolve().parent / "long_context"
TEXT = "prideprejudice"
ALIASES = {"smollm2-135m": "SmolLM2-135M-Instruct", "gemma3-270m": "Gemma-3-270M (base)"}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _machine(started: datetime) -> dict:
    return {
        "command": "python benchmarks/long_context_study.py " + " ".join(sys.argv[1:]),
        "started_utc": started.isoformat(timespec="seconds"),
        "minutes": round((datetime.now(timezone.utc) - started).total_seconds() / 60, 1),
        "machine": f"{os.cpu_count()} CPU cores, {platform.platform()}",
        "load_average_end": os.getloadavg(),
    }


def quality(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from harness.texts import austen

    from optimum_gatenorm import CompareConfig, RetrievalConfig, compare

    started = datetime.now(timezone.utc)
    retrieval = RetrievalConfig(tasks=("passkey", "multikey"), lengths=tuple(args.lengths), cases=args.cases)
    config = CompareConfig(
        criteria=["cosine_self"],
        num_layers=args.num_layers,
        window=args.window,
        max_tokens=args.max_tokens,
        replacement=args.replacement,
        retrieval=retrieval,
    )
    result = compare(args.model, austen(TEXT), config, progress=True)
    data = json.loads(result.to_json())
    data["study"] = _machine(started)
    out = HERE / f"{args.model}-{args.replacement}.json"
    write_json(out, data, indent=2)
    print(result.format_table())
    print(f"Wrote {out}")


def speed(args) -> None:
    from transformers import AutoConfig

    from optimum_gatenorm import (
        BenchmarkSettings,
        GateNormConfig,
        ModelCost,
        export_onnx,
        ideal_speedup,
        predict_speedup,
        prune_and_save,
        resolve_model,
        run_benchmark,
    )

    started = datetime.now(timezone.utc)
    source = resolve_model(args.model)
    config = AutoConfig.from_pretrained(source)
    settings = BenchmarkSettings(
        prompt_lengths=args.prompt_lengths, new_tokens=args.new_tokens, runs=args.runs, warmup=args.warmup
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="long-context-speed-") as tmp:
        root = Path(tmp)
        begin = time.perf_counter()
        baseline = export_onnx(source, root / "unpruned")
        print(f"exported the unpruned model in {time.perf_counter() - begin:.0f} s", file=sys.stderr)
        for k in args.num_layers:
            result = prune_and_save(source, root / f"k{k}", GateNormConfig(num_layers=k), export="onnx")
            removed = result.report.removed_layers
            measured = run_benchmark(root / f"k{k}" / "onnx", baseline, settings, progress=True)
            pruned_config = AutoConfig.from_pretrained(root / f"k{k}")
            for row in measured.summary:
                length = row["prompt_length"]
                base = ModelCost.from_config(config, window_aware=False)
                cand = ModelCost.from_config(pruned_config, window_aware=False)
                kv = {  # the cache an onnxruntime run holds at the prompt's end: every position of every kept layer
                    name: cost.decode_step(1, length).bytes_breakdown["kv_cache"]
                    for name, cost in (("unpruned", base), ("pruned", cand))
                }
                aware = {
                    phase: ideal_speedup(
                        ModelCost.from_config(config), ModelCost.from_config(pruned_config), phase, 1, length
                    )["compute_bound" if phase == "prefill" else "memory_bound"]
                    for phase in ("prefill", "decode")
                }
                rows.append(
                    {
                        "k": k,
                        "removed_layers": list(removed),
                        "prompt_length": length,
                        "speedup": row["speedup"],
                        "ranges": {
                            name: {m: row[name][m] for m in ("prefill_s", "decode_tokens_per_s")}
                            for name in ("baseline", "candidate")
                        },
                        "cost_model_onnxruntime": row["ideal"],
                        "cost_model_window_aware": aware,
                        "planner": {
                            phase: predict_speedup(k, None, config, phase, 1, length, "linear")
                            for phase in ("prefill", "decode")
                        },
                        "kv_cache_bytes": kv,
                        "memory_growth_mb": {
                            name: row[name]["memory_growth_mb"]["median"] for name in ("baseline", "candidate")
                        },
                        "prefill_s": {name: row[name]["prefill_s"]["median"] for name in ("baseline", "candidate")},
                        "decode_tokens_per_s": {
                            name: row[name]["decode_tokens_per_s"]["median"] for name in ("baseline", "candidate")
                        },
                        "warnings": measured.warnings,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            # Written after every k: an 8k-token run can take the machine's memory (each side's onnxruntime
            # session holds its attention scores), and what was measured must survive it.
            out = HERE / f"{args.model}-speed.json"
            settings = {key: value for key, value in vars(args).items() if key != "func"}
            out.write_text(
                json.dumps({"study": _machine(started), "settings": settings, "rows": rows}, indent=2) + "\n"
            )
            del measured
            gc.collect()
    print(f"Wrote {out}")


def _cells(point: dict, tasks: tuple[str, ...], lengths: list[int]) -> list[str]:
    found = point.get("retrieval") or {}
    return ["{}/{}".format(*found[f"{task}@{length}"]) for task in tasks for length in lengths]


def tables(args) -> None:
    for model, name in ALIASES.items():
        runs = {r: HERE / f"{model}-{r}.json" for r in ("none", "linear")}
        runs = {r: json.loads(p.read_text()) for r, p in runs.items() if p.is_file()}
        if not runs:
            continue
        first = next(iter(runs.values()))
        lengths = first["settings"]["retrieval"]["lengths"]
        tasks = tuple(first["settings"]["retrieval"]["tasks"])
        print(f"\n{name} ({first['settings']['window']}-token windows, {first['num_tokens']} tokens)\n")
        head = [f"{task} {length // 1024}k" for task in tasks for length in lengths]
        print("| k | replacement | removed | perplexity | KL mean | top-1 | " + " | ".join(head) + " |")
        print("| --- " * (6 + len(head)) + "|")
        rows = []
        for replacement, data in runs.items():
            for point in data["points"]:
                k = point["num_layers"]
                if k == 0 and any(rows_k == 0 for rows_k, *_ in rows):
                    continue  # the unpruned model, once
                rows.append((k, replacement != "linear", "unpruned" if k == 0 else replacement, point))
        for k, _, what, point in sorted(rows, key=lambda row: row[:2]):
            cells = [
                str(k),
                what,
                ",".join(map(str, point["removed_layers"])) or "-",
                f"{point['perplexity']:.2f}",
                f"{point['kl_mean']:.3f}",
                f"{point['top1_agreement']:.3f}",
                *_cells(point, tasks, lengths),
            ]
            print("| " + " | ".join(cells) + " |")
        speed_file = HERE / f"{model}-speed.json"
        if speed_file.is_file():
            print(
                "\n| k | prompt | prefill | decode | planner (prefill / decode) | KV cache (MB, unpruned / pruned) |"
            )
            print("| --- | --- | --- | --- | --- | --- |")
            for row in json.loads(speed_file.read_text())["rows"]:
                kv = row["kv_cache_bytes"]
                print(
                    f"| {row['k']} | {row['prompt_length']} | {row['speedup']['prefill_s']:.2f}x | "
                    f"{row['speedup']['decode_tokens_per_s']:.2f}x | {row['planner']['prefill']:.2f}x / "
                    f"{row['planner']['decode']:.2f}x | {kv['unpruned'] / 2**20:.0f} / {kv['pruned'] / 2**20:.0f} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    q = commands.add_parser("quality", help="retrieval and 4k-window perplexity per k (compare)")
    q.add_argument("--model", default="smollm2-135m", choices=sorted(ALIASES))
    q.add_argument("--replacement", default="linear", choices=("none", "linear"))
    q.add_argument("--num-layers", type=_ints, default=[0, 2, 4, 6, 8])
    q.add_argument("--lengths", type=_ints, default=[1024, 2048, 4096])
    q.add_argument("--cases", type=int, default=2)
    q.add_argument("--window", type=int, default=4096)
    q.add_argument("--max-tokens", type=int, default=8192)
    q.set_defaults(func=quality)
    s = commands.add_parser("speed", help="onnxruntime CPU speed at long prompts, pruned vs unpruned")
    s.add_argument("--model", default="smollm2-135m", choices=sorted(ALIASES))
    s.add_argument("--num-layers", type=_ints, default=[4, 8])
    s.add_argument("--prompt-lengths", type=_ints, default=[1024, 4096, 8000])
    s.add_argument("--new-tokens", type=int, default=16)
    s.add_argument("--runs", type=int, default=3)
    s.add_argument("--warmup", type=int, default=1)
    s.set_defaults(func=speed)
    t = commands.add_parser("tables", help="print the README tables from the JSON files")
    t.set_defaults(func=tables)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
