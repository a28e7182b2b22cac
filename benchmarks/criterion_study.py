"""Criterion study: can a weight-only criterion match the data-driven ones, on SmolLM2-135M and Gemma-3-270M?

    python benchmarks/criterion_study.py [--model smollm2-135m] [--max-tokens 2048] [--window 512]
        [--ks 0,2,4,...] [--seeds 0-6] [--texts pride-and-prejudice,lee-news,emma] [--extra-criteria NAME,...]
        [--output-dir DIR] [--add-criteria NAME,...] [--plot-only]

Writes to `benchmarks/criteria/<model>/` by default; `--model gemma3-270m` sweeps k in {0, 2, 3, ..., 7} (of 18).
(The 0.3.0 SmolLM2 study, 5 seeds and no `<bos>`, is in `benchmarks/criteria/*.json`; `--output-dir
benchmarks/criteria` redraws it.)

For each evaluation text (Pride and Prejudice first: criteria are *chosen* on it; gensim's Lee news corpus and
Jane Austen's *Emma*, never looked at while designing, *confirm* the choice; see benchmarks/harness/texts.py), on one
loaded model:

1. `compare` over every criterion (weight-only: gate_norm, gate_norm_head, gate_norm_folded, ov_norm, gate_ov,
   ov_relative, gate_trace; data-driven: cosine, attn_norm; random over 7 seeds; last; any `--extra-criteria`),
   k in {0, 2, ..., 12} (SmolLM2) or {0, 2, ..., 7} (Gemma), protect_first=1;
2. the same with the selection rule min_gap=2 (no two removed sublayers adjacent) for gate_norm, ov_relative and
   gate_trace;
3. ov_relative re-scored after each removal (the removed sublayer no longer feeds the residual-scale estimate);
4. single-layer ablation: perplexity with each attention sublayer removed alone, and the Spearman correlation of
   every criterion's scores with it and with the data-driven criteria.

Writes `<text>.json`, `<text>.png` and `summary.md` (tables, the first k at which each criterion is worse than the
median random draw, correlations) to the output directory. Calibration for cosine/attn_norm: 32 x 128 tokens of
*Sense and Sensibility* (disjoint from both texts).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch
from harness.arguments import make_calibration, study_parser
from harness.texts import austen, lee_news
from harness.writers import write_json
from transformers import AutoTokenizer

from optimum_gatenorm import load_pruned, resolve_model
from optimum_gatenorm.checkpoints.tensors import ModelWeights
from optimum_gatenorm.criteria.circuits import StackWeights, ov_relative
from optimum_gatenorm.evaluation.compare import CompareConfig, compare_criteria, mask_attention, spearman
from optimum_gatenorm.evaluation.perplexity import perplexity
from optimum_gatenorm.text import read_text


CRITERIA = (
    "gate_norm",
    "gate_norm_head",
    "gate_norm_folded",
    "ov_norm",
    "gate_ov",
    "ov_relative",
    "gate_trace",
    "cosine",
    "attn_norm",
    "random",
    "last",
)
GAP_CRITERIA = ("gate_norm", "ov_relative", "gate_trace")
# The k values of the sweep per built-in model: up to L / 2.5 of L layers (30 for SmolLM2, 18 for Gemma).
DEFAULT_KS = {"smollm2-135m": (0, 2, 4, 6, 8, 10, 12), "gemma3-270m": (0, 2, 3, 4, 5, 6, 7)}
MODEL_NAMES = {"smollm2-135m": "SmolLM2-135M-Instruct", "gemma3-270m": "Gemma-3-270M"}
TEXTS = ("pride-and-prejudice", "lee-news", "emma")
PROTECT_FIRST = 1


def _text_path(name: str) -> Path:
    return {
        "pride-and-prejudice": lambda: austen("prideprejudice"),
        "lee-news": lee_news,
        "emma": lambda: austen("emma"),
    }[name]()


def _int_list(text: str) -> tuple[int, ...]:
    values: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        values += range(int(low), int(high or low) + 1)
    return tuple(values)


BOS_CHOICES = {"auto": None, "on": True, "off": False}


def main():
    parser = study_parser(__doc__, max_tokens=2048, window=512, output_dir="")
    parser.add_argument("--model", default="smollm2-135m", choices=sorted(DEFAULT_KS), help="built-in model")
    parser.add_argument("--ks", type=_int_list, default=None, help="k values, e.g. 0,2-7 (default: per model)")
    parser.add_argument("--seeds", type=_int_list, default=tuple(range(7)), help="random seeds (default 0-6)")
    parser.add_argument("--texts", default=",".join(TEXTS), help=f"evaluation texts, the first chooses ({TEXTS})")
    parser.add_argument("--extra-criteria", default="", help="more registered criteria, comma-separated")
    parser.add_argument(
        "--ablation-texts",
        type=int,
        default=None,
        help="single-layer ablation on the first N texts only (default all)",
    )
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw the PNGs from the JSON files, measure nothing"
    )
    parser.add_argument(
        "--add-criteria",
        default="",
        help="measure only these registered criteria (comma-separated) and add them to the existing <text>.json "
        "files of --texts, at their k values (random, ablation and the other criteria are kept as they are)",
    )
    parser.add_argument(
        "--bos",
        choices=sorted(BOS_CHOICES),
        default="auto",
        help="BOS in front of every evaluation and calibration window: auto (where the tokenizer adds one), on, off. "
        "The recorded SmolLM2 study used on (transformers 4.57's conversion then added <|im_start|>)",
    )
    args = parser.parse_args()
    args.bos = BOS_CHOICES[args.bos]
    ks = args.ks or DEFAULT_KS[args.model]
    criteria = CRITERIA + tuple(c for c in args.extra_criteria.split(",") if c)
    default_out = f"benchmarks/criteria/{args.model}"
    out = Path(args.output_dir or default_out)
    if args.plot_only:
        for path in sorted(out.glob("*.json")):
            plot_record(json.loads(path.read_text()), path.with_suffix(".png"))
        write_summary(out)
        return
    out.mkdir(parents=True, exist_ok=True)
    if args.add_criteria:
        add_criteria(args, out, [c for c in args.add_criteria.split(",") if c])
        return
    path = resolve_model(args.model)
    model = load_pruned(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    calibration = make_calibration(tokenizer, austen("sensesensibility"), args)
    names = [name for name in args.texts.split(",") if name]
    texts = {name: _text_path(name) for name in names}
    model_name = MODEL_NAMES[args.model]
    command = " ".join(
        ["python benchmarks/criterion_study.py", f"--model {args.model}", f"--max-tokens {args.max_tokens}"]
        + [f"--window {args.window}", f"--ks {','.join(map(str, ks))}", f"--seeds {args.seeds[0]}-{args.seeds[-1]}"]
        + ([f"--ablation-texts {args.ablation_texts}"] if args.ablation_texts is not None else [])
        + ([f"--extra-criteria {args.extra_criteria}"] if args.extra_criteria else [])
    )
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    for name, text_path in texts.items():
        start = time.perf_counter()
        text = read_text(text_path)
        sweep = dict(
            num_layers=ks, window=args.window, max_tokens=args.max_tokens, protect_first=PROTECT_FIRST, bos=args.bos
        )
        common = dict(calibration=calibration, model_name=model_name, text_name=name, progress=True)
        main_result = compare_criteria(
            model, tokenizer, text, CompareConfig(criteria=criteria, min_gap=1, seeds=args.seeds, **sweep), **common
        )
        gap_result = compare_criteria(
            model, tokenizer, text, CompareConfig(criteria=GAP_CRITERIA, min_gap=2, **sweep), **common
        )

        def ppl(layers, text=text):
            with mask_attention(model, layers), torch.no_grad():
                return perplexity(model, tokenizer, text, window=args.window, max_tokens=args.max_tokens).perplexity

        rescored = rescored_ov_relative(model, max(ks))
        rescored_curve = {k: ppl(rescored[:k]) if k else main_result.baseline_perplexity for k in ks}
        index = list(texts).index(name)
        if args.ablation_texts is None or index < args.ablation_texts:
            ablation = [ppl([layer]) for layer in range(model.config.num_hidden_layers)]
        else:
            ablation = None

        curves = {c: _median_curve(main_result, c) for c in criteria}
        curves.update({f"{c} (min_gap=2)": _median_curve(gap_result, c) for c in GAP_CRITERIA})
        curves["ov_relative (re-scored)"] = rescored_curve
        removed = {c: _removed(main_result, c) for c in criteria if c != "random"}
        removed.update({f"{c} (min_gap=2)": _removed(gap_result, c) for c in GAP_CRITERIA})
        removed["ov_relative (re-scored)"] = {k: sorted(rescored[:k]) for k in ks}
        scores = {c: info["scores"] for c, info in main_result.criteria.items()}
        correlations = {
            c: {
                ref: _spearman(scores[c], scores[ref] if ref != "ablation" else ablation)
                for ref in ("cosine", "attn_norm", "ablation")
                if ref != "ablation" or ablation is not None
            }
            for c in criteria
        }
        record = {
            "model": model_name,
            "command": command,
            "machine": machine,
            "num_layers": model.config.num_hidden_layers,
            "text": name,
            "num_tokens": main_result.num_tokens,
            "baseline_perplexity": main_result.baseline_perplexity,
            "settings": main_result.settings,
            "curves": {c: {str(k): v for k, v in curve.items()} for c, curve in curves.items()},
            "random_per_seed": _random_runs(main_result),
            "removed": {c: {str(k): v for k, v in r.items()} for c, r in removed.items()},
            "scores": scores,
            "scoring_seconds": {c: info["scoring_seconds"] for c, info in main_result.criteria.items()},
            "single_layer_ablation": ablation,
            "spearman": correlations,
        }
        record["seconds"] = round(time.perf_counter() - start)
        write_json(out / f"{name}.json", record)
        plot_record(record, out / f"{name}.png")
        print(write_summary(out), flush=True)
    print(json.dumps({"written": sorted(p.name for p in out.iterdir())}))


def add_criteria(args, out: Path, added: list[str]) -> None:
    """`--add-criteria`: measures `added` on each text of `--texts` and merges them into its `<text>.json`."""
    path = resolve_model(args.model)
    model = load_pruned(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    calibration = make_calibration(tokenizer, austen("sensesensibility"), args)
    for name in [n for n in args.texts.split(",") if n]:
        record_path = out / f"{name}.json"
        record = json.loads(record_path.read_text())
        settings = record["settings"]
        ks = tuple(sorted(int(k) for k in record["curves"]["random"]))
        start = time.perf_counter()
        result = compare_criteria(
            model,
            tokenizer,
            read_text(_text_path(name)),
            CompareConfig(
                criteria=tuple(added),
                min_gap=1,
                num_layers=ks,
                window=settings["window"],
                max_tokens=settings["max_tokens"],
                protect_first=settings["protect_first"],
                bos=settings.get("bos", args.bos),
            ),
            calibration=calibration,
            model_name=record.get("model", ""),
            text_name=name,
            progress=True,
        )
        if abs(result.baseline_perplexity - record["baseline_perplexity"]) > 1e-3 * record["baseline_perplexity"]:
            raise SystemExit(
                f"{name}: unpruned perplexity {result.baseline_perplexity:.3f} differs from the record's "
                f"{record['baseline_perplexity']:.3f}: not the same setting, nothing merged"
            )
        ablation = record.get("single_layer_ablation")
        for c in added:
            info = result.criteria[c]
            record["curves"][c] = {str(k): v for k, v in _median_curve(result, c).items()}
            record["removed"][c] = {str(k): v for k, v in _removed(result, c).items()}
            record["scores"][c] = info["scores"]
            record["scoring_seconds"][c] = info["scoring_seconds"]
            record["spearman"][c] = {
                ref: _spearman(info["scores"], record["scores"][ref] if ref != "ablation" else ablation)
                for ref in ("cosine", "attn_norm", "ablation")
                if ref != "ablation" or ablation is not None
            }
        record.setdefault("added", []).append(
            {
                "criteria": added,
                "command": f"python benchmarks/criterion_study.py --model {args.model} --texts {name} "
                f"--add-criteria {','.join(added)}",
                "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
                "seconds": round(time.perf_counter() - start),
            }
        )
        write_json(record_path, record)
        plot_record(record, out / f"{name}.png")
        print(write_summary(out), flush=True)


def write_summary(out: Path) -> str:
    """`summary.md` from every `<text>.json` in `out` (texts of separate runs included), the choosing text first."""
    records = [json.loads(path.read_text()) for path in out.glob("*.json")]
    records.sort(key=lambda r: TEXTS.index(r["text"]) if r["text"] in TEXTS else len(TEXTS))
    if not records:
        return ""
    first = records[0]
    summary = [
        f"# Criterion study: {first.get('model', 'SmolLM2-135M-Instruct')}, perplexity with k attention sublayers "
        "removed",
        "",
        f"Criteria are chosen on {first['text']} and confirmed on the other texts. protect_first={PROTECT_FIRST}.",
        "",
    ]
    for record in records:
        summary += [f"Command: `{record.get('command', '')}` (machine: {record.get('machine', '')}).", ""]
        for extra in record.get("added", []):
            summary += [f"Added: `{extra['command']}` (machine: {extra['machine']}; {extra['seconds']} s).", ""]
        summary += _section(record["text"], record, record.get("seconds", 0))
    text = "\n".join(summary) + "\n"
    (out / "summary.md").write_text(text)
    return text


PLOTTED = {
    "cosine_self": ("cosine_self (own text)", "black", "-", 2.5),
    "trace_write": ("trace_write (data-free)", "tab:orange", "-", 2.5),
    "gate_trace (min_gap=2)": ("gate_trace, min_gap 2", "tab:green", "-", 2.0),
    "gate_trace": ("gate_trace, k lowest", "tab:green", ":", 1.5),
    "gate_norm": ("gate_norm (paper)", "tab:red", "-", 1.5),
    "ov_relative (min_gap=2)": ("ov_relative, min_gap 2", "tab:purple", "-", 1.5),
    "gate_ov": ("gate_ov", "tab:brown", "-", 1.0),
    "cosine": ("cosine (data-driven)", "tab:blue", "--", 1.5),
    "attn_norm": ("attn_norm (data-driven)", "tab:cyan", "--", 1.5),
    "last": ("last", "tab:gray", ":", 1.0),
}


def plot_record(record: dict, path: Path) -> None:
    """Perplexity vs k (log scale) for the main criteria, random as a median line and a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from optimum_gatenorm.outputs import atomic_save_figure

    fig, ax = plt.subplots(figsize=(8, 5))
    ks = sorted(int(k) for k in record["curves"]["random"])
    runs = record["random_per_seed"].values()
    low = [min(run[str(k)] for run in runs) for k in ks]
    high = [max(run[str(k)] for run in runs) for k in ks]
    ax.fill_between(ks, low, high, color="0.85", label=f"random, {len(runs)} seeds (min-max)")
    ax.plot(ks, [record["curves"]["random"][str(k)] for k in ks], color="0.4", label="random, median")
    for key, (label, color, style, width) in PLOTTED.items():
        if key not in record["curves"]:
            continue
        ax.plot(ks, [record["curves"][key][str(k)] for k in ks], style, color=color, linewidth=width, label=label)
    ax.set_yscale("log")
    ax.set_xlabel(f"attention sublayers removed (k of {record.get('num_layers', 30)})")
    ax.set_ylabel("perplexity")
    ax.set_title(f"{record.get('model', 'SmolLM2-135M-Instruct')}, {record['text']} ({record['num_tokens']} tokens)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    atomic_save_figure(fig, path, overwrite=True)
    plt.close(fig)


def rescored_ov_relative(model, k_max: int) -> list[int]:
    """Removal order of ov_relative re-scored after each removal (removed sublayers add nothing to R)."""
    total = model.config.num_hidden_layers
    removed: list[int] = []
    with torch.no_grad():
        for _ in range(k_max):
            present = [i for i in range(total) if i not in removed]
            values = ov_relative(StackWeights(ModelWeights(model), model.config, present))
            candidates = [(v, i) for v, i in zip(values, present, strict=True) if i >= PROTECT_FIRST]
            removed.append(min(candidates)[1])
    return removed


def _median_curve(result, criterion):
    return {k: statistics.median(values) for k, values in sorted(result.curve(criterion).items())}


def _removed(result, criterion):
    return {p.num_layers: p.removed_layers for p in result.points if p.criterion == criterion}


def _random_runs(result):
    runs = {}
    for p in result.points:
        if p.criterion == "random":
            runs.setdefault(str(p.seed), {})[str(p.num_layers)] = p.perplexity
    return runs


def _spearman(a, b):
    present = [i for i, value in enumerate(a) if value is not None]
    value = spearman([a[i] for i in present], [b[i] for i in present])
    return None if value != value else round(value, 3)


def _section(name, record, seconds):
    curves = record["curves"]
    random_median = curves["random"]
    ks = [int(k) for k in random_median if int(k) > 0]
    header = "| criterion | " + " | ".join(f"k={k}" for k in ks) + " | first k worse than random median |"
    lines = [
        f"## {name}: {record['num_tokens']} tokens, unpruned perplexity {record['baseline_perplexity']:.2f} "
        f"({seconds:.0f} s)",
        "",
        header,
        "| --- " * (len(ks) + 2) + "|",
    ]
    for criterion, curve in curves.items():
        worse = [k for k in ks if criterion != "random" and curve[str(k)] > random_median[str(k)]]
        first = str(worse[0]) if worse else ("-" if criterion == "random" else f"never (k <= {max(ks)})")
        cells = " | ".join(f"{curve[str(k)]:.1f}" for k in ks)
        seeds = len(record["random_per_seed"])
        label = f"random (median of {seeds} seeds)" if criterion == "random" else criterion
        lines.append(f"| {label} | {cells} | {first} |")
    lines += [
        "",
        "| criterion | data-free | scoring s | Spearman vs cosine | vs attn_norm | vs single-layer ablation |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for criterion, rho in record["spearman"].items():
        cells = " | ".join(
            "n/a" if rho.get(r) is None else f"{rho[r]:+.2f}" for r in ("cosine", "attn_norm", "ablation")
        )
        data_free = {"cosine": "no", "attn_norm": "no", "cosine_self": "own text"}.get(criterion, "yes")
        lines.append(f"| {criterion} | {data_free} | {record['scoring_seconds'][criterion]:.3f} | {cells} |")
    ablation = record["single_layer_ablation"]
    if ablation is not None:
        order = sorted(range(len(ablation)), key=lambda i: ablation[i])
        lines += [
            "",
            "Single-layer ablation (perplexity with only that attention sublayer removed), least harmful first: "
            + ", ".join(f"{i} ({ablation[i]:.1f})" for i in order),
        ]
    lines += [
        "",
        f"Removed at k={max(ks)}: "
        + "; ".join(f"{c}: {r[str(max(ks))]}" for c, r in record["removed"].items() if c not in ("random",)),
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
