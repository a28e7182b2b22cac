"""Which layers hold induction and previous-token heads, found with no data, beside what breaks retrieval.

    python benchmarks/induction_probe.py [--models smollm2-135m,gemma3-270m] [--length 512]

A random token sequence is fed twice, `[x, x]` (n tokens each, two sequences of seed 0 averaged). Per layer and head:
the induction score, the mean attention from each position t of the second copy to t - n + 1 (the token after the
earlier occurrence of the current token: Olsson et al. 2022), and the previous-token score, the mean attention from
t to t - 1 over the whole sequence. Reported per layer: the largest of its heads. Writes
`long_context/induction.json` beside the long-context study, which asks whether keeping the layers with induction
heads would keep retrieval (docs/quality.md, "Keeping the layers that retrieve").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.writers import write_json


OUT = Path(__file__).resolve().parent / "long_context" / "induction.json"


def probe(alias: str, length: int, sequences: int = 2) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from optimum_gatenorm import resolve_model

    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(alias), attn_implementation="eager", dtype=torch.float32
    )
    model.eval()
    generator = torch.Generator().manual_seed(0)
    n = min(length, model.config.max_position_embeddings // 2)
    induction = prev = 0
    for _ in range(sequences):
        x = torch.randint(1000, model.config.vocab_size, (1, n), generator=generator)
        with torch.inference_mode():
            attentions = model(torch.cat([x, x], dim=1), output_attentions=True, use_cache=False).attentions
        second, every = torch.arange(n, 2 * n - 1), torch.arange(1, 2 * n)
        induction += torch.stack([a[0, :, second, second - n + 1].mean(-1) for a in attentions]) / sequences
        prev += torch.stack([a[0, :, every, every - 1].mean(-1) for a in attentions]) / sequences
    return {
        "length": n,
        "sequences": sequences,
        "induction": [round(float(v), 4) for v in induction.max(-1).values],
        "previous_token": [round(float(v), 4) for v in prev.max(-1).values],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--length", type=int, default=512)
    args = parser.parse_args()
    results = {alias: probe(alias, args.length) for alias in args.models.split(",")}
    for alias, found in results.items():
        print(alias)
        for layer, (ind, prev) in enumerate(zip(found["induction"], found["previous_token"], strict=True)):
            print(f"  layer {layer:>2}: induction {ind:.3f}  previous token {prev:.3f}")
    write_json(OUT, results, indent=2)
    print(f"Wrote {OUT}")


if __name__ == "__main__":
    main()
