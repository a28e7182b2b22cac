"""What a `linear` replacement costs in speed: SmolLM2-135M unpruned, pruned `none` and pruned `linear`, at each k,
on onnxruntime CPU and llama.cpp CPU, side by side in one run.

    python benchmarks/replacement_speed.py [--ks 4,8] [--prompt-lengths 128,1024] [--new-tokens 32] [--runs 7]
        [--warmup 1] [--threads 2] [--engines onnxruntime,llama.cpp]
        [--output benchmarks/replacement/speed-cpu.json]

For each k the default criterion (`cosine_self`, seed 0, layer 0 protected) chooses the layers once; the same layers
are removed plainly (`--replacement none`) and with the default `linear` map fitted as `prune` fits it. Every
variant is exported twice, with the package's own exporters: to ONNX (`export_onnx`, fp32, loaded as
`ORTModelForCausalLM`) and to an f32 GGUF (`export_gguf`: `deci`, a removed layer has zero heads, a replaced one
`head_count_kv = 0` and an `n_embd x n_embd` `attn_output`, loaded through llama-cpp-python). Exports are cached
under `~/.cache/optimum_gatenorm/replacement_speed`.

Timing: per prompt length, one random prompt; each round runs every (engine, variant) once, the order rotated from
round to round so no variant always follows another, warm-up rounds discarded. onnxruntime: one `generate` of exactly
`--new-tokens` tokens, prefill = time to the first token, decode = mean time per later token
(`speed.throughput`'s clock, as `optimum-cli gatenorm benchmark` measures). llama.cpp: one `eval` of the prompt on
an empty KV cache, then exactly `--new-tokens` single-token `eval`s. Reported per engine and length: medians of
prefill seconds and decode tokens per second, and per pair the median of the per-round ratios with their min-max
range; a ratio whose range straddles 1 is flagged `within_noise`.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from harness.llama_cpp_timing import time_once as llama_cpp_once  # one timing of llama.cpp for both studies
from harness.writers import write_json

from optimum_gatenorm import GateNormConfig, GateNormPruner, export_gguf, export_onnx, resolve_model
from optimum_gatenorm.checkpoints.models import cache_dir
from optimum_gatenorm.speed.throughput import BenchmarkSettings, load_model, timed_run
from optimum_gatenorm.version import __version__


MODEL = "smollm2-135m"
PAIRS = (("none", "unpruned"), ("linear", "unpruned"), ("linear", "none"))


def _variants(ks: list[int], root: Path) -> dict[str, dict]:
    """Every variant's ONNX directory and GGUF file, exported once and cached; the layers each k removes."""
    source = resolve_model(MODEL)
    variants = {"unpruned": {"k": 0, "replacement": None, "layers": []}}
    for k, kind in itertools.product(ks, ("none", "linear")):
        variants[f"k{k}-{kind}"] = {"k": k, "replacement": kind}
    pruner, scores = None, None
    for name, variant in variants.items():
        onnx_dir, gguf = root / f"{name}-onnx", root / f"{name}-f32.gguf"
        variant.update(onnx=onnx_dir, gguf=gguf)
        record = root / f"{name}.json"
        if onnx_dir.is_dir() and gguf.is_file() and record.is_file():
            variant["layers"] = json.loads(record.read_text())["layers"]
            continue
        if variant["k"] == 0:
            model = source
        else:
            if pruner is None:
                pruner = GateNormPruner.from_pretrained(MODEL)
                scores = pruner.score("cosine_self")
            # prune() works in place: each variant prunes its own copy of the unpruned model, with the same scores.
            config = GateNormConfig(num_layers=variant["k"], replacement=variant["replacement"])
            model, report = GateNormPruner(copy.deepcopy(pruner.model), pruner.tokenizer).prune(config, scores=scores)
            variant["layers"] = report.removed_layers
        print(f"exporting {name} ...", flush=True)
        export_onnx(model, onnx_dir, overwrite=True)
        export_gguf(model, gguf, gguf_type="f32", overwrite=True, tokenizer_from=source)
        record.write_text(json.dumps({"layers": variant["layers"]}))
    return variants


def _ort_once(model, prompt: list[int], settings: BenchmarkSettings) -> tuple[float, float]:
    record = timed_run(model, torch.tensor([prompt]), settings, lambda: None, "cpu")
    return record["prefill_s"], record["decode_tokens_per_s"]


def _ratios(times: dict, better: str, worse: str) -> dict:
    """Speed-up of `better` over `worse` per round: prefill time worse / better, decode tok/s better / worse."""
    out = {}
    for metric, invert in (("prefill_s", True), ("decode_tok_s", False)):
        a, b = times[better][metric], times[worse][metric]
        per_round = [(w / v) if invert else (v / w) for v, w in zip(a, b, strict=True)]
        out[metric.split("_")[0]] = {
            "median": statistics.median(per_round),
            "min": min(per_round),
            "max": max(per_round),
            "within_noise": min(per_round) <= 1.0 <= max(per_round),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="4,8")
    parser.add_argument("--prompt-lengths", default="128,1024")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default="onnxruntime,llama.cpp")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/replacement/speed-cpu.json"))
    args = parser.parse_args()
    ks = [int(x) for x in args.ks.split(",")]
    lengths = [int(x) for x in args.prompt_lengths.split(",")]
    engines = [e for e in args.engines.split(",") if e]

    root = cache_dir() / "replacement_speed"
    root.mkdir(parents=True, exist_ok=True)
    variants = _variants(ks, root)

    torch.set_num_threads(args.threads)
    started, load_start = datetime.now(timezone.utc), os.getloadavg()
    settings = BenchmarkSettings(prompt_lengths=lengths, new_tokens=args.new_tokens)
    loaded: dict[tuple[str, str], object] = {}
    n_ctx = max(lengths) + args.new_tokens + 8
    for name, variant in variants.items():
        if "onnxruntime" in engines:
            loaded[("onnxruntime", name)] = load_model(variant["onnx"], settings)
        if "llama.cpp" in engines:
            from llama_cpp import Llama

            loaded[("llama.cpp", name)] = Llama(
                model_path=str(variant["gguf"]), n_ctx=n_ctx, n_batch=n_ctx, n_threads=args.threads, verbose=False
            )
    rng = np.random.default_rng(0)
    rows = []
    keys = list(loaded)
    for length in lengths:
        prompt = rng.integers(100, 49000, size=length).tolist()
        times = {key: {"prefill_s": [], "decode_tok_s": []} for key in keys}
        for round_ in range(args.warmup + args.runs):
            shift = round_ % len(keys)
            for key in keys[shift:] + keys[:shift]:
                engine, name = key
                if engine == "llama.cpp":
                    prefill, decode = llama_cpp_once(loaded[key], prompt, args.new_tokens)
                else:
                    prefill, decode = _ort_once(loaded[key], prompt, settings)
                if round_ >= args.warmup:
                    times[key]["prefill_s"].append(prefill)
                    times[key]["decode_tok_s"].append(decode)
        for engine in engines:
            per_engine = {name: times[(engine, name)] for name in variants}
            row = {
                "engine": engine,
                "prompt": length,
                "prefill_s": {n: statistics.median(t["prefill_s"]) for n, t in per_engine.items()},
                "decode_tok_s": {n: statistics.median(t["decode_tok_s"]) for n, t in per_engine.items()},
                "ratios": {},
                "raw": per_engine,
            }
            for k in ks:
                for better, worse in PAIRS:
                    b = "unpruned" if better == "unpruned" else f"k{k}-{better}"
                    w = "unpruned" if worse == "unpruned" else f"k{k}-{worse}"
                    row["ratios"][f"{b} vs {w}"] = _ratios(per_engine, b, w)
            rows.append(row)
            print(json.dumps({key: value for key, value in row.items() if key != "raw"}), flush=True)

    import llama_cpp
    import onnxruntime

    summary = {
        "command": "python benchmarks/replacement_speed.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "output"),
        "gatenorm_version": __version__,
        "started_utc": started.isoformat(timespec="seconds"),
        "minutes": round((datetime.now(timezone.utc) - started).total_seconds() / 60, 1),
        "machine": f"{os.cpu_count()} CPU cores, {platform.platform()}",
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "onnxruntime": onnxruntime.__version__,
        "llama_cpp_python": llama_cpp.__version__,
        "variants": {
            n: {"k": v["k"], "replacement": v["replacement"], "layers": v["layers"]} for n, v in variants.items()
        },
        "weights_mb": {
            n: {
                "onnx": round(sum(f.stat().st_size for f in Path(v["onnx"]).glob("model.onnx*")) / 1e6, 1),
                "gguf": round(Path(v["gguf"]).stat().st_size / 1e6, 1),
            }
            for n, v in variants.items()
        },
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, summary, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
