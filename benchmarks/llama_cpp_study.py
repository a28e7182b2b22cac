"""llama.cpp CPU throughput of SmolLM2-135M pruned by k attention sublayers vs unpruned, from our GGUF exports.

    python benchmarks/llama_cpp_study.py [--k 4] [--gguf-type f32] [--prompt-lengths 128,1024] [--new-tokens 32] \
        [--runs 5] [--warmup 1] [--threads 2] [--criterion gate_trace] [--output benchmarks/llama_cpp/summary.json] \
        [--quantize q4_k_m [--kl-tokens 1024]]

With `--quantize TYPE` both timed files are quantized by llama.cpp's own quantizer (`export_gguf(quantize=...)`, from
the `--gguf-type` file) and a quality section is added first: on the first `--kl-tokens` tokens of *Pride and
Prejudice* (tests/data), the mean KL divergence and top-1 agreement of llama.cpp's next-token distributions, each
file against the unpruned `--gguf-type` file: the quantization alone (unpruned TYPE), the pruning alone (pruned
`--gguf-type`) and both (pruned TYPE), so what pruning adds on top of quantization shows.

Both models are exported with `export_gguf` (unpruned: llama.cpp's `llama`; pruned with `--criterion`, default
`gate_trace` (the package default when the recorded run was made; all SmolLM2 layers have the same size, so which
layers go does not change the speed), layer 0 protected: `deci` with zero heads in the removed layers) and loaded once each through
llama-cpp-python. Each round times, for A then B (then B then A in the next round, interleaved): prefill of a random
prompt (one `eval` of the whole prompt, KV cache cleared first) and exactly `--new-tokens` greedy decode steps (one
`eval` per token, no early stop). Reported: medians over rounds, speed-up = median unpruned / median pruned time
(prefill) and pruned / unpruned tokens per second (decode), and the per-round range of the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from harness.llama_cpp_timing import time_once
from harness.writers import write_json


def _export(k: int, gguf_type: str, root: Path, criterion: str, quantize: str | None = None) -> Path:
    from optimum_gatenorm import GateNormConfig, GateNormPruner, export_gguf, resolve_model, save_pruned

    source = resolve_model("smollm2-135m")
    out = root / f"smollm2-k{k}-{criterion if k else 'none'}-{quantize or gguf_type}.gguf"
    if out.is_file():
        return out
    if k == 0:
        return export_gguf(source, out, gguf_type=gguf_type, quantize=quantize)
    pruned = root / f"smollm2-k{k}-{criterion}"  # pruned once, exported to every type from the checkpoint
    if not pruned.is_dir():
        model, _ = GateNormPruner.from_pretrained(source).prune(GateNormConfig(num_layers=k, criterion=criterion))
        save_pruned(model, pruned, tokenizer_from=source)
    return export_gguf(pruned, out, gguf_type=gguf_type, quantize=quantize)


def _log_probs(path: Path, tokens: list[int], threads: int) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path),
        n_ctx=len(tokens) + 8,
        n_batch=len(tokens),
        n_threads=threads,
        logits_all=True,
        verbose=False,
    )
    llm.eval(tokens)
    logits = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


def _quality(files: dict[str, Path], reference: Path, kl_tokens: int, threads: int) -> dict:
    """Mean KL(reference || file) and top-1 agreement of llama.cpp's next-token distributions on a real text."""
    from llama_cpp import Llama

    text = (Path(__file__).resolve().parents[1] / "tests" / "data" / "pride_and_prejudice.txt").read_text()
    tokenizer = Llama(model_path=str(reference), vocab_only=True, verbose=False)
    tokens = tokenizer.tokenize(text.encode("utf-8"), add_bos=True)[:kl_tokens]
    expected = _log_probs(reference, tokens, threads)
    rows = {}
    for name, path in files.items():
        got = _log_probs(path, tokens, threads)
        kl = (np.exp(expected) * (expected - got)).sum(axis=-1)
        rows[name] = {
            "file": path.name,
            "kl_mean": float(kl.mean()),
            "kl_p99": float(np.quantile(kl, 0.99)),
            "top1_agreement": float((got.argmax(-1) == expected.argmax(-1)).mean()),
            "bytes": path.stat().st_size,
        }
        print(json.dumps({name: rows[name]}))
    return {"reference": reference.name, "text": "pride_and_prejudice.txt", "tokens": len(tokens), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--gguf-type", default="f32", choices=("f32", "f16", "q8_0"))
    parser.add_argument("--prompt-lengths", default="128,1024")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--criterion", default="gate_trace", help="criterion of the pruned model (default gate_trace)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/llama_cpp/summary.json"))
    parser.add_argument("--quantize", help="time files quantized by llama.cpp's quantizer (e.g. q4_k_m)")
    parser.add_argument("--kl-tokens", type=int, default=1024, help="--quantize: tokens of the quality check")
    args = parser.parse_args()

    import llama_cpp
    from llama_cpp import Llama

    from optimum_gatenorm.checkpoints.models import cache_dir

    root = cache_dir() / "llama_cpp_study"
    root.mkdir(parents=True, exist_ok=True)
    started, load_start = datetime.now(timezone.utc), os.getloadavg()
    files = {
        "unpruned": _export(0, args.gguf_type, root, args.criterion, args.quantize),
        f"k{args.k}": _export(args.k, args.gguf_type, root, args.criterion, args.quantize),
    }
    quality = None
    if args.quantize:
        reference = _export(0, args.gguf_type, root, args.criterion)
        compared = {
            f"unpruned {args.quantize}": files["unpruned"],
            f"k{args.k} {args.gguf_type}": _export(args.k, args.gguf_type, root, args.criterion),
            f"k{args.k} {args.quantize}": files[f"k{args.k}"],
        }
        quality = _quality(compared, reference, args.kl_tokens, args.threads)
    lengths = [int(x) for x in args.prompt_lengths.split(",")]
    n_ctx = max(lengths) + args.new_tokens + 8
    models = {
        name: Llama(
            model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=args.threads, logits_all=False, verbose=False
        )
        for name, path in files.items()
    }
    rng = np.random.default_rng(0)
    rows = []
    for length in lengths:
        prompt = rng.integers(100, 49000, size=length).tolist()
        times = {name: {"prefill_s": [], "decode_tok_s": []} for name in models}
        order = list(models)
        for round_ in range(args.warmup + args.runs):
            for name in order if round_ % 2 == 0 else order[::-1]:
                prefill, decode = time_once(models[name], prompt, args.new_tokens)
                if round_ >= args.warmup:
                    times[name]["prefill_s"].append(prefill)
                    times[name]["decode_tok_s"].append(decode)
        base, cand = times["unpruned"], times[f"k{args.k}"]
        prefill_ratios = [b / c for b, c in zip(base["prefill_s"], cand["prefill_s"], strict=True)]
        decode_ratios = [c / b for b, c in zip(base["decode_tok_s"], cand["decode_tok_s"], strict=True)]
        rows.append(
            {
                "prompt": length,
                "prefill_s": {name: statistics.median(t["prefill_s"]) for name, t in times.items()},
                "decode_tok_s": {name: statistics.median(t["decode_tok_s"]) for name, t in times.items()},
                "prefill_speedup": statistics.median(base["prefill_s"]) / statistics.median(cand["prefill_s"]),
                "decode_speedup": statistics.median(cand["decode_tok_s"]) / statistics.median(base["decode_tok_s"]),
                "prefill_speedup_range": [min(prefill_ratios), max(prefill_ratios)],
                "decode_speedup_range": [min(decode_ratios), max(decode_ratios)],
                "raw": times,
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "raw"}))
    summary = {
        "command": "python benchmarks/llama_cpp_study.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("output",) and v is not None
        ),
        "started_utc": started.isoformat(timespec="seconds"),
        "minutes": round((datetime.now(timezone.utc) - started).total_seconds() / 60, 1),
        "machine": f"{os.cpu_count()} CPU cores, {platform.platform()}",
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "llama_cpp_python": llama_cpp.__version__,
        "gguf_type": args.gguf_type,
        "quantize": args.quantize,
        "files": {name: path.name for name, path in files.items()},
        "quality": quality,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, summary, indent=2)


if __name__ == "__main__":
    main()
