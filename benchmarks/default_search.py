"""Default-criterion search (issue #16): which data-free criterion holds on SmolLM2-135M *and* Gemma-3-270M?

    python benchmarks/default_search.py --model PATH --text NAME=FILE [--text ...] --ks 2 4 6 7 \
        --calibration FILE --output benchmarks/criteria/default_search/<model>.json

A scratch study, not product code: it runs on any Hugging Face causal LM of the llama or gemma3_text families with
plain `transformers` (so it also runs where the package has no adapter for the model yet, e.g. Gemma 3 before its
adapter lands), and it computes every candidate criterion itself, from the loaded modules:

- removal of attention sublayer `l` = a forward hook that zeroes the attention module's output. For pre-norm
  models (llama) that is exactly the pruned layer (what `optimum_gatenorm.evaluation.compare.mask_attention`
  does); for Gemma 3 the post-attention norm of zero is zero, so the layer becomes
  `h + post_ff_norm(mlp(pre_ff_norm(h)))`, exactly the pruned layer without KV cache;
- perplexity: the first `--max-tokens` tokens of each text in non-overlapping `--window`-token windows; when the
  tokenizer adds a BOS token by itself (Gemma), each window gets `<bos>` prepended and every window token is
  scored; otherwise (SmolLM2, as the package's `perplexity`) the first token of each window is context only;
- norm gains are read generically as `norm(ones)` (an RMSNorm of a unit-RMS vector returns its gain), which is
  `w` for llama and `1 + w` for Gemma;
- random: the median of `--seeds` draws (uniform over the unprotected layers, layer 0 protected);
- every perplexity is cached by removed set, so criteria that pick the same layers cost one evaluation.

Candidates (lowest score removed first, layer 0 always kept):

- `gate_norm`, `gate_trace` (the package's formulas, pre-attention gain folded as the package does), with
  min_gap 1 and 2;
- `write_rel`: the attention write relative to the estimated residual stream at that depth, from weights. The
  attention write's expected norm `A_l` is `||gamma_post||_2` for sandwich-norm models (the post-attention RMSNorm
  fixes the rms of its input, so the write has norm `||gamma_post||` for isotropic input) and `ov_norm` otherwise;
  the MLP's `M_l` likewise `||gamma_post_ff||` or `mlp_output_norm`; `R_l^2 = e^2 + sum_{j<i} A_j^2 + M_j^2`;
- `trace_write`: rank of `gate_trace` + rank of `write_rel` (no constants);
- `*+global`: the same order, with the scarce attention type of a model that mixes two (Gemma 3's 3 full-attention
  layers among 15 sliding ones) put after all the others;
- `cosine` on real calibration text (`--calibration`, 16 x 256 tokens) and `cosine_self`: `cosine` measured on
  16 x 256 tokens the model samples itself from its start token (temperature 1, seed 0): no data at all.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from optimum_gatenorm.criteria.circuits import mlp_output_norm  # noqa: E402  (pure tensor code, any transformers)


PROTECT_FIRST = 1


def gain(norm: torch.nn.Module, hidden: int) -> torch.Tensor:
    """The elementwise gain of an RMSNorm: its output on a unit-RMS vector of ones."""
    with torch.no_grad():
        eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", 0.0))
        return norm(torch.ones(1, hidden)).reshape(hidden).float() * math.sqrt(1 + eps)


def sandwich(layer) -> bool:
    return hasattr(layer, "post_feedforward_layernorm")


def attention_types(config) -> list[str]:
    types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    return list(types)


# --- weight-only candidates ---------------------------------------------------------------------------------


def layer_tensors(model, i):
    cfg = model.config
    layer = model.model.layers[i]
    att = layer.self_attn
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    n = cfg.hidden_size
    q = att.q_proj.weight.detach().float().reshape(heads, d, n)
    k = att.k_proj.weight.detach().float().reshape(kv, d, n)
    v = att.v_proj.weight.detach().float().reshape(kv, d, n)
    o = att.o_proj.weight.detach().float().reshape(n, heads, d).permute(1, 0, 2)
    return q, k, v, o, gain(layer.input_layernorm, n), heads // kv


def grouped(q, group):
    return q.reshape(-1, group, *q.shape[1:]).sum(dim=1)


def gate_norm_score(model, i):
    q, k, _, _, _, group = layer_tensors(model, i)
    a = grouped(q, group).reshape(-1, q.shape[-1])
    b = k.reshape(-1, k.shape[-1])
    return float(((a @ a.T) * (b @ b.T)).sum().clamp_min(0).sqrt())


def gate_trace_score(model, i):
    q, k, _, _, g, group = layer_tensors(model, i)
    return -float((grouped(q, group) * k * g.square()).sum()) / math.sqrt(k.shape[1])


def ov_norm(model, i):
    _, _, v, o, g, group = layer_tensors(model, i)
    v = v * g
    vg = torch.einsum("gdn,gen->gde", v, v).repeat_interleave(group, dim=0)
    og = torch.einsum("hnd,hne->hde", o, o)
    return math.sqrt(float((vg * og).sum().clamp_min(0)))


def write_sizes(model):
    """(A_l, M_l) per layer: expected norms of the attention and MLP writes for a unit-RMS isotropic input."""
    from transformers.activations import ACT2FN

    cfg, n = model.config, model.config.hidden_size
    out = []
    for i, layer in enumerate(model.model.layers):
        if sandwich(layer):
            a = float(gain(layer.post_attention_layernorm, n).norm())
            m = float(gain(layer.post_feedforward_layernorm, n).norm())
        else:
            a = ov_norm(model, i)
            mlp = layer.mlp
            act = ACT2FN[getattr(cfg, "hidden_act", None) or cfg.hidden_activation]
            m = mlp_output_norm(
                mlp.gate_proj.weight.detach().float(),
                mlp.up_proj.weight.detach().float(),
                mlp.down_proj.weight.detach().float(),
                gain(layer.post_attention_layernorm, n),
                act,
            )
        out.append((a, m))
    return out


def embedding_norm(model):
    emb = model.model.embed_tokens
    scale = float(getattr(emb, "embed_scale", 1.0))
    return float(emb.weight.detach().float().square().sum(dim=1).mean().sqrt()) * scale


def write_rel_scores(model):
    sizes = write_sizes(model)
    squared = embedding_norm(model) ** 2
    scores = []
    for a, m in sizes:
        scores.append(a / math.sqrt(squared))
        squared += a * a + m * m
    return scores


def ranks(values):
    order = sorted(range(len(values)), key=lambda i: values[i])
    r = [0] * len(values)
    for position, i in enumerate(order):
        r[i] = position
    return r


# --- data-driven candidates ---------------------------------------------------------------------------------


def attention_write(layer, output):
    update = output[0] if isinstance(output, tuple) else output
    return layer.post_attention_layernorm(update) if sandwich(layer) else update


def cosine_scores(model, windows: torch.Tensor) -> list[float]:
    """`1 - cos(X, X + A)` token-averaged per layer (the package's `cosine`: the layers that change the residual
    stream least go first), on `windows` `[n, length]`."""
    layers = model.model.layers
    sums = [0.0] * len(layers)
    inputs = {}
    handles = []
    for i, layer in enumerate(layers):

        def pre(module, args, kwargs, i=i):
            inputs[i] = args[0] if args else kwargs["hidden_states"]

        def post(module, args, output, i=i, layer=layer):
            x = inputs.pop(i).float()
            a = attention_write(layer, output).float()
            sums[i] += float(F.cosine_similarity(x, x + a, dim=-1, eps=1e-12).double().sum())

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.self_attn.register_forward_hook(post))
    try:
        with torch.no_grad():
            for row in windows:
                model(row[None])
    finally:
        for h in handles:
            h.remove()
    return [1 - s / windows.numel() for s in sums]


def self_generated(model, tokenizer, num=16, length=256, seed=0) -> torch.Tensor:
    """`num` sequences of `length` tokens sampled by the model from its start token, temperature 1."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            torch.full((num, 1), start),
            attention_mask=torch.ones(num, 1, dtype=torch.long),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=length,
            min_new_tokens=length,
            pad_token_id=start,
        )
    prepend = tokenizer_adds_bos(tokenizer)
    return out if prepend else out[:, 1:]


# --- evaluation ---------------------------------------------------------------------------------------------


BOS = False  # --bos: the model needs <bos> in front of every window (Gemma: DESIGN.md section 7)


def tokenizer_adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return BOS or (tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id)


class Evaluator:
    def __init__(self, model, tokenizer, text, window, max_tokens):
        self.model = model
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        self.bos = tokenizer.bos_token_id if tokenizer_adds_bos(tokenizer) else None
        self.windows = [ids[i : i + window] for i in range(0, len(ids), window)]
        self.windows = [w for w in self.windows if len(w) > 1]
        self.cache: dict[tuple, float] = {}

    def __call__(self, removed) -> float:
        key = tuple(sorted(removed))
        if key not in self.cache:
            self.cache[key] = self._measure(key)
        return self.cache[key]

    def _measure(self, removed) -> float:
        layers = self.model.model.layers

        def zero(module, args, output):
            if isinstance(output, tuple):
                return (torch.zeros_like(output[0]), *output[1:])
            return torch.zeros_like(output)

        handles = [layers[i].self_attn.register_forward_hook(zero) for i in removed]
        nll, count = 0.0, 0
        try:
            with torch.no_grad():
                for w in self.windows:
                    ids = torch.tensor([([self.bos] if self.bos is not None else []) + w])
                    logits = self.model(ids).logits[0, :-1].float()
                    targets = ids[0, 1:]
                    loss = F.cross_entropy(logits, targets, reduction="sum")
                    nll += float(loss)
                    count += targets.numel()
        finally:
            for h in handles:
                h.remove()
        return math.exp(nll / count)


def select(scores, k, *, min_gap=1, late=()):
    """The package's selection: lowest scores first, layer 0 protected; `late` layers ordered after all others;
    with min_gap > 1, skip layers within min_gap - 1 of an already chosen one while any other is left."""
    candidates = [i for i in range(len(scores)) if i >= PROTECT_FIRST]
    order = sorted(candidates, key=lambda i: (i in late, scores[i], i))
    chosen: list[int] = []
    for i in order:
        if len(chosen) == k:
            break
        if all(abs(i - c) >= min_gap for c in chosen):
            chosen.append(i)
    for i in order:  # fall back to plain order if the gap rule leaves too few
        if len(chosen) == k:
            break
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--text", action="append", required=True, help="NAME=FILE")
    p.add_argument("--calibration", help="text file for real-text cosine (16 x 256 tokens)")
    p.add_argument("--ks", type=int, nargs="+", required=True)
    p.add_argument("--seeds", type=int, default=7)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--self-calibration", action="store_true", help="also cosine on self-generated text (slow)")
    p.add_argument("--bos", action="store_true", help="prepend <bos> to every window (Gemma needs it)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="*", help="criteria to evaluate (default all)")
    p.add_argument("--output", required=True)
    args = p.parse_args()
    global BOS
    BOS = args.bos
    torch.set_num_threads(args.threads)

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    L = model.config.num_hidden_layers
    types = attention_types(model.config)
    counts = {t: types.count(t) for t in set(types)}
    scarce = min(counts, key=counts.get) if len(counts) > 1 else None
    late = {i for i, t in enumerate(types) if t == scarce}

    cost: dict[str, float] = {}
    scores: dict[str, list[float]] = {}

    def timed(name, fn):
        start = time.perf_counter()
        scores[name] = fn()
        cost[name] = time.perf_counter() - start

    timed("gate_norm", lambda: [gate_norm_score(model, i) for i in range(L)])
    timed("gate_trace", lambda: [gate_trace_score(model, i) for i in range(L)])
    timed("write_rel", lambda: write_rel_scores(model))
    scores["trace_write"] = [
        a + b for a, b in zip(ranks(scores["gate_trace"]), ranks(scores["write_rel"]), strict=True)
    ]
    cost["trace_write"] = cost["gate_trace"] + cost["write_rel"]
    if args.calibration and (not args.only or any(n.startswith("cosine") for n in args.only)):
        ids = tokenizer(Path(args.calibration).read_text(), add_special_tokens=False)["input_ids"][: 16 * 256]
        windows = torch.tensor(ids).reshape(16, 256)
        if tokenizer_adds_bos(tokenizer):
            windows = torch.cat([torch.full((16, 1), tokenizer.bos_token_id), windows], dim=1)
        timed("cosine", lambda: cosine_scores(model, windows))
    print("costs (s):", {k: round(v, 3) for k, v in cost.items()}, flush=True)

    def selections_of(names):
        found: dict[str, dict[int, list[int]]] = {}
        for name in names:
            found[name] = {k: select(scores[name], k) for k in args.ks}
            if name in ("gate_norm", "gate_trace", "write_rel"):
                found[f"{name} (min_gap=2)"] = {k: select(scores[name], k, min_gap=2) for k in args.ks}
            if late:
                found[f"{name}+global"] = {k: select(scores[name], k, late=late) for k in args.ks}
                if name == "gate_trace":
                    found[f"{name} (min_gap=2)+global"] = {
                        k: select(scores[name], k, min_gap=2, late=late) for k in args.ks
                    }
        if args.only:  # in the order given: the most promising first
            found = {n: found[n] for n in args.only if n in found}
        return found

    selections = selections_of(list(scores))
    for crit, sel in selections.items():
        print(f"selection {crit}: {sel}", flush=True)

    record = {
        "model": args.model,
        "model_type": model.config.model_type,
        "num_layers": L,
        "late_layers": sorted(late),
        "ks": args.ks,
        "max_tokens": args.max_tokens,
        "window": args.window,
        "cost_s": cost,
        "scores": scores,
        "selections": {n: {str(k): v for k, v in s.items()} for n, s in selections.items()},
        "texts": {},
    }
    generator = torch.Generator().manual_seed(0)
    draws = {
        k: [
            sorted(torch.randperm(L - PROTECT_FIRST, generator=generator)[:k].add(PROTECT_FIRST).tolist())
            for _ in range(args.seeds)
        ]
        for k in args.ks
    }
    evaluators = {}

    def save():
        record["selections"] = {n: {str(k): v for k, v in s.items()} for n, s in selections.items()}
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(record, indent=1))

    for spec in args.text:
        name, path = spec.split("=", 1)
        ev = evaluators[name] = Evaluator(model, tokenizer, Path(path).read_text(), args.window, args.max_tokens)
        start = time.perf_counter()
        entry = {"baseline": ev(()), "curves": {}, "random": {}}
        print(f"{name}: unpruned {entry['baseline']:.2f}", flush=True)
        for crit, sel in selections.items():
            entry["curves"][crit] = {str(k): ev(sel[k]) for k in args.ks}
            print(f"{name}: {crit}: {entry['curves'][crit]}", flush=True)
            record["texts"][name] = entry
            save()
        for k in args.ks:
            values = [ev(d) for d in draws[k]]
            entry["random"][str(k)] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
            print(f"{name}: random k={k} {entry['random'][str(k)]}", flush=True)
            save()
        entry["seconds"] = time.perf_counter() - start
        record["texts"][name] = entry
        save()
    if args.self_calibration:
        start = time.perf_counter()
        generated = self_generated(model, tokenizer)
        cost["generation"] = time.perf_counter() - start
        timed("cosine_self", lambda: cosine_scores(model, generated))
        cost["cosine_self"] += cost["generation"]
        print("costs (s):", {k: round(v, 3) for k, v in cost.items()}, flush=True)
        record["generated_sample"] = tokenizer.decode(generated[0][:64])
        new = selections_of(["cosine_self"])
        selections.update(new)
        for name, ev in evaluators.items():
            for crit, sel in new.items():
                record["texts"][name]["curves"][crit] = {str(k): ev(sel[k]) for k in args.ks}
                print(f"{name}: {crit}: {record['texts'][name]['curves'][crit]}", flush=True)
        save()
    print("written", args.output)


def report(paths: list[str]) -> str:
    """Markdown tables (criterion x k, random median [min-max], ratio to cosine) from the JSON files `paths`
    of one model (several runs of the same model and text are merged)."""
    texts: dict[str, dict] = {}
    for path in paths:
        record = json.loads(Path(path).read_text())
        for name, entry in record["texts"].items():
            merged = texts.setdefault(name, {"baseline": entry["baseline"], "curves": {}, "random": {}, "sel": {}})
            merged["curves"].update(entry["curves"])
            merged["random"].update(entry["random"])
            merged["sel"].update(record["selections"])
            merged["tokens"] = record["max_tokens"]
    lines = []
    for name, entry in texts.items():
        ks = sorted({int(k) for curve in entry["curves"].values() for k in curve} | {int(k) for k in entry["random"]})
        lines += [f"**{name}** (first {entry['tokens']} tokens, unpruned {entry['baseline']:.2f})", ""]
        lines += ["| criterion | " + " | ".join(f"k={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
        cosine = entry["curves"].get("cosine", {})
        for crit, curve in entry["curves"].items():
            cells = []
            for k in ks:
                value = curve.get(str(k))
                if value is None:
                    cells.append("")
                    continue
                cell = f"{value:.1f}"
                if crit != "cosine" and str(k) in cosine:
                    cell += f" ({value / cosine[str(k)]:.2f}x)"
                if str(k) in entry["random"] and value > entry["random"][str(k)]["median"]:
                    cell = f"**{cell}**"
                cells.append(cell)
            lines.append(f"| {crit} | " + " | ".join(cells) + " |")
        cells = [
            f"{r['median']:.1f} ({r['min']:.1f}-{r['max']:.1f})" if (r := entry["random"].get(str(k))) else ""
            for k in ks
        ]
        lines.append("| random, median (min-max) | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Removed: " + "; ".join(f"{c}: {s}" for c, s in entry["sel"].items() if c in entry["curves"]),
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--report"]:
        print(report(sys.argv[2:]))
    else:
        main()
