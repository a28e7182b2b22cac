"""Probe: choose the layers by how well a linear map can *replace* them, not by how little they turn the stream.

    OMP_NUM_THREADS=1 python benchmarks/replaceability_probe.py [--model smollm2-135m] [--ks 4,8]
        [--texts pride-and-prejudice,lee-news,emma] [--max-tokens 2048] [--output benchmarks/replacement/replaceability.json]

Two candidate selection scores, both from the text the model samples itself for `cosine_self` (seed 0, 16 x 256
tokens; no user data), beside the default criterion:

- `replaced_cosine`: each layer's linear map fitted alone (ridge, the strength chosen as `prune` chooses it, on 12 of
  the 16 windows), then on the 4 held-out windows the mean `1 - cos` between the stream after the true layer and the
  stream after the map (the `cosine` criterion's measure, with the map in place of plain removal);
- `cosine_x_error`: the `cosine_self` score times the map's held-out unexplained share of the sublayer's update.

For each k the three scores choose their layers (layer 0 protected, as the default), each set is replaced by
`linear` maps fitted exactly as `prune --replacement linear` fits them, and the default set is also removed plainly;
every variant and the unpruned model are scored on the same 512-token windows of each text (perplexity, KL
divergence to the unpruned model, top-1 agreement). Uses the package's private fitting helpers
(`pruning.replacement`): it is a study, not an API.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
from harness.texts import TEXTS
from harness.writers import shown, write_json

from optimum_gatenorm import GateNormConfig, GateNormPruner, __version__
from optimum_gatenorm.checkpoints.modeling import prune_model
from optimum_gatenorm.evaluation.perplexity import forward_logits, score_windows
from optimum_gatenorm.pruning.pruner import select_layers
from optimum_gatenorm.pruning.replacement import fit_replacements, layer_replaceability
from optimum_gatenorm.text import read_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ks", default="4,8")
    parser.add_argument("--texts", default=",".join(TEXTS))
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).resolve().parent / "replacement" / "replaceability.json"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    begin = time.perf_counter()
    pruner = GateNormPruner.from_pretrained(args.model)
    model, tokenizer = pruner.model.eval(), pruner.tokenizer
    scored = pruner.score("cosine_self", seed=0)
    cosine, calibration = list(scored.scores), scored.windows
    started = time.perf_counter()
    replaced_cos, unexplained = layer_replaceability(model, calibration)
    scores = {
        "cosine_self": cosine,
        "replaced_cosine": replaced_cos,
        "cosine_x_error": [c * e for c, e in zip(cosine, unexplained, strict=True)],
    }
    result = {
        "model": args.model,
        "gatenorm_version": __version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), {platform.platform()}",
        "replaceability_seconds": time.perf_counter() - started,
        "scores": scores,
        "unexplained_share": unexplained,
        "sets": [],
        "points": [],
    }
    variants = {}
    for k in [int(x) for x in args.ks.split(",")]:
        for name, values in scores.items():
            removed, _, _ = select_layers(list(values), GateNormConfig(num_layers=k))
            fit = fit_replacements(model, removed, "linear", calibration)
            variant = copy.deepcopy(model)
            prune_model(variant, removed, criterion=name, replacements=fit.layers)
            variants[(k, name, "linear")] = variant.eval()
            result["sets"].append({"k": k, "criterion": name, "layers": removed})
            print(f"k={k} {name}: {removed}", flush=True)
            if name == "cosine_self":
                plain = copy.deepcopy(model)
                prune_model(plain, removed, criterion=name)
                variants[(k, name, "none")] = plain.eval()
    for text_name in [t for t in args.texts.split(",") if t]:
        windows = score_windows(
            [forward_logits(v) for v in variants.values()],
            tokenizer,
            read_text(TEXTS[text_name]()),
            reference=forward_logits(model),
            window=512,
            max_tokens=args.max_tokens,
        )
        for (k, name, kind), tally in zip(variants, windows.tallies, strict=True):
            point = {"text": text_name, "k": k, "criterion": name, "replacement": kind}
            point |= {"perplexity": tally.perplexity, **tally.divergence()}
            point["unpruned_perplexity"] = windows.reference.perplexity
            result["points"].append(point)
            print(json.dumps(point), flush=True)
    result["seconds"] = time.perf_counter() - begin
    write_json(args.output, result)
    print(f"wrote {shown(args.output)}")


if __name__ == "__main__":
    main()
