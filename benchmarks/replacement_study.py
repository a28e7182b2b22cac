"""Replacement study (issue 22): what does replacing each removed attention sublayer by a fitted map win back?

    python benchmarks/replacement_study.py [--model smollm2-135m] [--ks 4,8] [--max-tokens 2048] [--window 512]
        [--texts pride-and-prejudice,lee-news,emma] [--chat-ks 4] [--output-dir benchmarks/replacement]
        [--variants none,mean,linear] [--distill-steps 100] [--distill-samples 16] [--output-name NAME]

On one loaded model, with the default criterion (`cosine_self`, seed 0, layer 0 protected) choosing the layers:

1. the model samples its own 16 x 256 calibration tokens once (as `prune` does); for each k the chosen layers are
   removed plainly (`none`) and with `mean` and `linear` replacements fitted on those tokens
   (`pruning.replacement.fit_replacements`, timed), plus the recovery `prune` reports (mean KL divergence to the
   unpruned model on 2 sequences sampled with seed 1, which the fit did not use); `--variants` adds `weights`
   (a linear map from the value and output projections, no forward pass) and `distill` (least squares, then fitted
   end to end; on `--distill-samples` self-sampled sequences, seed 0, when given, else the same 16);
2. on each text, one pass over the 512-token windows scores every variant and the unpruned model on the same
   windows: perplexity, KL(unpruned || variant) mean / p99 / max and top-1 agreement
   (`evaluation.divergence`);
3. for the ks in `--chat-ks`, chat fidelity against the unpruned model's greedy answers (`evaluation.chat`).

Texts: `pride-and-prejudice` is `tests/data/pride_and_prejudice.txt` in full (the issue's probe text; the default
is *chosen* on it); `lee-news` (gensim's Lee corpus) and `emma` (Jane Austen) *confirm* it, their first
`--max-tokens` tokens (see benchmarks/harness/texts.py; `pride-and-prejudice` is capped too). Writes
`<model>.json` (every number, the layers, the fit settings, the machine) to the output directory.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import torch
from harness import ROOT
from harness.texts import TEXTS
from harness.writers import write_json

from optimum_gatenorm import GateNormConfig, GateNormPruner
from optimum_gatenorm.checkpoints.modeling import prune_model
from optimum_gatenorm.criteria.selfcal import self_generated
from optimum_gatenorm.evaluation.chat import chat_answers, chat_fidelity
from optimum_gatenorm.evaluation.perplexity import forward_logits, score_windows
from optimum_gatenorm.pruning.fits import DISTILL_STEPS, distill_samples, fit_replacements_by, weight_replacements
from optimum_gatenorm.pruning.pruner import select_layers
from optimum_gatenorm.pruning.replacement import RECOVERY_SAMPLES, replacement_recovery
from optimum_gatenorm.text import read_text
from optimum_gatenorm.version import __version__


# variant -> (replacement kind, fit) (`pruning.fits`)
VARIANTS = {
    "none": ("none", None),
    "mean": ("mean", "least-squares"),
    "linear": ("linear", "least-squares"),
    "weights": ("linear", "weights"),
    "distill": ("linear", "distill"),
}


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ks", type=_ints, default=[4, 8])
    parser.add_argument("--chat-ks", type=_ints, default=[4])
    parser.add_argument("--texts", default=",".join(TEXTS))
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "replacement")
    parser.add_argument("--output-name", help="file name without .json (default: the model's name)")
    parser.add_argument("--variants", default="none,mean,linear", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--distill-steps", type=int, default=DISTILL_STEPS)
    parser.add_argument("--distill-samples", type=int, help="self-sampled sequences for distill (default: the 16)")
    args = parser.parse_args()
    torch.manual_seed(0)
    begin = time.perf_counter()

    pruner = GateNormPruner.from_pretrained(args.model)
    model, tokenizer = pruner.model.eval(), pruner.tokenizer
    result: dict = {
        "model": args.model,
        "gatenorm_version": __version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), {platform.platform()}",
        "window": args.window,
        "max_tokens": args.max_tokens,
        "criterion": "cosine_self",
        "seed": args.seed,
        "points": [],
        "fits": [],
        "chat": [],
        "texts": {},
    }

    started = time.perf_counter()
    scores = pruner.score("cosine_self", seed=args.seed)
    calibration = scores.windows  # the windows the scoring sampled, which prune fits on
    result["scoring_seconds"] = time.perf_counter() - started
    result["scores"] = list(scores.scores)
    result["calibration"] = calibration.to_dict()
    recovery_windows = self_generated(model, num_samples=RECOVERY_SAMPLES, seed=args.seed + 1)
    recovery_source = f"{recovery_windows.shape[0]} x {recovery_windows.shape[1] - 1} tokens (seed {args.seed + 1})"

    kinds = [v for v in args.variants.split(",") if v]
    distill_windows = calibration
    if "distill" in kinds and args.distill_samples:
        distill_windows = distill_samples(model, args.distill_samples, args.seed)
    result["variants"] = {name: VARIANTS[name] for name in kinds}
    variants: dict[tuple[int, str], torch.nn.Module] = {}
    for k in args.ks:
        removed, _, _ = select_layers(list(scores.scores), GateNormConfig(num_layers=k, seed=args.seed))
        for name in kinds:
            kind, how = VARIANTS[name]
            fit = None
            if kind != "none":
                if how == "weights":  # not a `--fit` choice (measured worse than plain removal), kept as a variant
                    fit = weight_replacements(model, removed)
                else:
                    fit = fit_replacements_by(
                        model,
                        removed,
                        kind,
                        how,
                        calibration,
                        distill_windows=distill_windows,
                        steps=args.distill_steps,
                    )
                fit.recovery = replacement_recovery(model, fit, recovery_windows, source=recovery_source)
                result["fits"].append({"k": k, "layers": removed, "variant": name, **fit.to_dict()})
                print(f"k={k} {name}: layers {removed}, fit {fit.seconds:.1f} s, recovery {fit.recovery}", flush=True)
            variant = copy.deepcopy(model)
            prune_model(variant, removed, criterion="cosine_self", replacements=fit.layers if fit else None)
            variants[(k, name)] = variant.eval()

    for name in [n for n in args.texts.split(",") if n]:
        path = TEXTS[name]()
        text = read_text(path)
        windows = score_windows(
            [forward_logits(variant) for variant in variants.values()],
            tokenizer,
            text,
            reference=forward_logits(model),
            window=args.window,
            max_tokens=args.max_tokens,
        )
        result["texts"][name] = {
            "file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name,
            "tokens_scored": windows.reference.count,
            "windows": windows.num_windows,
            "unpruned_perplexity": windows.reference.perplexity,
            "seconds": windows.seconds,
        }
        print(f"{name}: unpruned {windows.reference.perplexity:.2f} ({windows.seconds:.0f} s)", flush=True)
        for (k, kind), tally in zip(variants, windows.tallies, strict=True):
            point = {"text": name, "k": k, "replacement": kind, "perplexity": tally.perplexity, **tally.divergence()}
            result["points"].append(point)
            print(
                f"  k={k} {kind:6s} ppl {tally.perplexity:7.2f}  KL {point['kl_mean']:.4f} "
                f"p99 {point['kl_p99']:.3f}  top1 {point['top1_agreement']:.3f}",
                flush=True,
            )

    if args.chat_ks:
        reference_answers = chat_answers(model, tokenizer)
        result["chat_reference"] = [answer.text for answer in reference_answers]
        for k in args.chat_ks:
            for kind in kinds:
                chat = chat_fidelity(variants[(k, kind)], tokenizer, reference_answers, model_name=f"k={k} {kind}")
                result["chat"].append({"k": k, "replacement": kind, **chat.to_dict()})
                print(
                    f"chat k={k} {kind}: first sentence {chat.first_sentence_agreement:.2f}, "
                    f"tokens {chat.token_agreement:.2f}",
                    flush=True,
                )

    result["seconds"] = time.perf_counter() - begin
    args.output_dir.mkdir(parents=True, exist_ok=True)
    target = args.output_dir / f"{args.output_name or args.model}.json"
    write_json(target, result)
    print(f"wrote {target} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
