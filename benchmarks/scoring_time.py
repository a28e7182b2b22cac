"""How long data-free scoring takes: the real SmolLM2-135M, and synthetic layers of LLaMA-13B / 70B shape.

Run: python benchmarks/scoring_time.py [--repeats 5] [--output benchmarks/scoring_time.json]

Scores are computed in float32 on the CPU. For the real model both paths are timed: streaming Q/K from the
safetensors file (no model built) and reading an in-memory model. The synthetic layers have random weights of
the real shapes (the cost of the criterion does not depend on the values), and are timed per layer.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from optimum_gatenorm import GateNormPruner, load_pruned, resolve_model
from optimum_gatenorm.checkpoints.tensors import AttentionWeights
from optimum_gatenorm.criteria import get_criterion


CRITERIA = ("gate_norm", "gate_norm_head", "gate_norm_folded")
# (name, hidden, heads, kv_heads, head_dim, layers in the full model)
SHAPES = (("llama-13b", 5120, 40, 40, 128, 40), ("llama-70b", 8192, 64, 8, 128, 80))


@dataclass
class Timing:
    what: str
    criterion: str
    median_s: float
    min_s: float
    max_s: float
    repeats: int
    note: str = ""


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _timing(what, criterion, times, note=""):
    return Timing(what, criterion, statistics.median(times), min(times), max(times), len(times), note)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--synthetic-repeats", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/scoring_time.json")
    args = parser.parse_args()

    results = []
    path = resolve_model("smollm2-135m")
    streaming = GateNormPruner.from_pretrained(path)
    in_memory = GateNormPruner(load_pruned(path))
    for criterion in CRITERIA:
        times = _time(lambda c=criterion: streaming.score(c), args.repeats)
        results.append(_timing("smollm2-135m, 30 layers, from safetensors", criterion, times))
        times = _time(lambda c=criterion: in_memory.score(c), args.repeats)
        results.append(_timing("smollm2-135m, 30 layers, in memory", criterion, times))

    generator = torch.Generator().manual_seed(0)
    for name, hidden, heads, kv_heads, head_dim, layers in SHAPES:
        q = torch.randn(heads, head_dim, hidden, generator=generator)
        k = torch.randn(kv_heads, head_dim, hidden, generator=generator)
        weights = AttentionWeights(0, q, k, torch.rand(hidden, generator=generator))
        for criterion in CRITERIA:
            fn = get_criterion(criterion).fn
            times = _time(lambda fn=fn, w=weights: fn(w), args.synthetic_repeats)
            note = f"one layer; x{layers} layers = {statistics.median(times) * layers:.1f} s for the model"
            results.append(
                _timing(f"{name} layer (hidden {hidden}, {heads}/{kv_heads} heads)", criterion, times, note)
            )

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    with open(args.output, "w") as f:
        json.dump({"machine": machine, "results": [asdict(r) for r in results]}, f, indent=2)
    print(f"machine: {machine}")
    print(f"{'what':<58} {'criterion':<17} {'median s':>9} {'min-max s':>17}  note")
    for r in results:
        print(f"{r.what:<58} {r.criterion:<17} {r.median_s:>9.4f} {r.min_s:>8.4f}-{r.max_s:<8.4f}  {r.note}")


if __name__ == "__main__":
    main()
