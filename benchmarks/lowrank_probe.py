"""Probe: how much of a `linear` replacement's recovery survives a low-rank map (for large models, where a `d x d`
map per layer is 64 MB at d = 4096 in fp32)?

    OMP_NUM_THREADS=1 python benchmarks/lowrank_probe.py [--model smollm2-135m] [--ks 4,8] [--ranks 16,64,144,288]
        [--texts pride-and-prejudice,lee-news,emma] [--max-tokens 2048] [--output benchmarks/replacement/lowrank.json]

For each k the default criterion (`cosine_self`, seed 0, layer 0 protected) chooses the layers, `linear` maps are
fitted exactly as `prune` fits them, and each map `W` is then truncated to rank r by its SVD (`U_r S_r V_r^T`: two
`d x r` factors, `2 d r` parameters instead of `d^2`). Plain removal, every rank and the full map are scored on the
same 512-token windows of each text (perplexity, KL divergence to the unpruned model, top-1 agreement). A truncated
SVD of the fitted map is not the best rank-r map (reduced-rank regression would project the fitted values instead),
so what it keeps is a lower bound on what a rank-r replacement can keep.
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
from optimum_gatenorm.checkpoints.structure import FittedReplacement
from optimum_gatenorm.evaluation.perplexity import forward_logits, score_windows
from optimum_gatenorm.pruning.pruner import select_layers
from optimum_gatenorm.pruning.replacement import fit_replacements
from optimum_gatenorm.text import read_text


def _truncated(fitted: FittedReplacement, rank: int) -> FittedReplacement:
    u, s, vh = torch.linalg.svd(fitted.tensors["proj.weight"].double(), full_matrices=False)
    weight = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return FittedReplacement("linear", {"proj.weight": weight.float()}, fitted.alpha, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ks", default="4,8")
    parser.add_argument("--ranks", default="16,64,144,288")
    parser.add_argument("--texts", default=",".join(TEXTS))
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).resolve().parent / "replacement" / "lowrank.json"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    begin = time.perf_counter()
    pruner = GateNormPruner.from_pretrained(args.model)
    model, tokenizer = pruner.model.eval(), pruner.tokenizer
    scored = pruner.score("cosine_self", seed=0)
    scores, calibration = list(scored.scores), scored.windows
    hidden = model.config.hidden_size
    ranks = [int(r) for r in args.ranks.split(",")] + [hidden]
    result = {
        "model": args.model,
        "gatenorm_version": __version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), {platform.platform()}",
        "hidden_size": hidden,
        "sets": [],
        "points": [],
    }
    variants = {}
    for k in [int(x) for x in args.ks.split(",")]:
        removed, _, _ = select_layers(scores, GateNormConfig(num_layers=k))
        fit = fit_replacements(model, removed, "linear", calibration)
        spectra = {
            layer: torch.linalg.svdvals(f.tensors["proj.weight"].double()).square() for layer, f in fit.layers.items()
        }
        energy = {
            r: sum(float(s[:r].sum() / s.sum()) for s in spectra.values()) / len(spectra) for r in ranks
        }  # mean share of ||W||_F^2 the rank-r truncation keeps
        result["sets"].append({"k": k, "layers": removed, "energy_kept": energy})
        plain = copy.deepcopy(model)
        prune_model(plain, removed, criterion="cosine_self")
        variants[(k, 0)] = plain.eval()
        for rank in ranks:
            variant = copy.deepcopy(model)
            layers = {layer: _truncated(f, rank) for layer, f in fit.layers.items()}
            prune_model(variant, removed, criterion="cosine_self", replacements=layers)
            variants[(k, rank)] = variant.eval()
        print(f"k={k}: layers {removed}, energy kept {energy}", flush=True)
    for text_name in [t for t in args.texts.split(",") if t]:
        windows = score_windows(
            [forward_logits(v) for v in variants.values()],
            tokenizer,
            read_text(TEXTS[text_name]()),
            reference=forward_logits(model),
            window=512,
            max_tokens=args.max_tokens,
        )
        for (k, rank), tally in zip(variants, windows.tallies, strict=True):
            point = {"text": text_name, "k": k, "rank": rank, "perplexity": tally.perplexity, **tally.divergence()}
            point["unpruned_perplexity"] = windows.reference.perplexity
            result["points"].append(point)
            print(json.dumps(point), flush=True)
    result["seconds"] = time.perf_counter() - begin
    write_json(args.output, result)
    print(f"wrote {shown(args.output)}")


if __name__ == "__main__":
    main()
