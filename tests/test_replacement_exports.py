"""Replaced attention sublayers in every export: ONNX (a MatMul or an Add, no attention, no KV), GGUF (llama.cpp's
deci linear-attention layer for `linear`, `mean` refused), Nemotron-NAS (refused)."""

import pytest
import torch
from conftest import ALL_TINY, HAS_ONNX, SKIP_ONNX, tiny_config, tiny_model

from optimum_gatenorm import UnsupportedModelError, prune_model
from optimum_gatenorm.criteria.calibration import Calibration
from optimum_gatenorm.pruning.replacement import fit_replacements


REPLACED = [0, 2]  # layer 0 included
PROMPT = torch.tensor([[3, 9, 27, 81, 115, 12, 40], [0, 0, 0, 7, 21, 63, 101]])
MASK = torch.tensor([[1] * 7, [0, 0, 0, 1, 1, 1, 1]])


def replaced_model(name: str, kind: str, layers=REPLACED):
    """A tiny model with `layers` replaced by `kind` fitted on random windows (`none`: removed plainly)."""
    model = tiny_model(name)
    fit = None
    if kind != "none":
        windows = torch.randint(0, 98, (8, 24), generator=torch.Generator().manual_seed(0))
        fit = fit_replacements(model, layers, kind, Calibration(windows))
    prune_model(model, layers, replacements=fit.layers if fit else None)
    return model


# --- ONNX ------------------------------------------------------------------------------------------------------------


def _onnx_exportable(name: str) -> bool:
    if not HAS_ONNX:
        return False
    from optimum_gatenorm.exporters.onnx import check_onnx_exportable

    try:
        check_onnx_exportable(tiny_config(name))
    except UnsupportedModelError:
        return False
    return True


ONNX_EXPORTABLE = [name for name in sorted(ALL_TINY) if _onnx_exportable(name)]


@pytest.fixture(scope="module", params=ONNX_EXPORTABLE or ["none"])
def onnx_exports(request, tmp_path_factory):
    """name -> {kind: (PyTorch model, ONNX dir)} for none / mean / linear."""
    if not HAS_ONNX:
        pytest.skip(SKIP_ONNX)
    from optimum_gatenorm import export_onnx

    name = request.param
    root = tmp_path_factory.mktemp(f"onnx-replaced-{name}")
    out = {}
    for kind in ("none", "mean", "linear"):
        model = replaced_model(name, kind)
        export_onnx(model, root / kind)
        out[kind] = (model, root / kind)
    return name, out


def _ops(directory) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(directory / "model.onnx"), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    kv = sorted(i.name for i in graph.input if i.name.startswith("past_key_values."))
    return counts, kv


@pytest.mark.onnx
def test_onnx_graph_holds_a_matmul_or_an_add_per_replaced_layer_and_no_attention(onnx_exports):
    _, exports = onnx_exports
    (plain, plain_kv), (mean, mean_kv), (linear, linear_kv) = (_ops(exports[k][1]) for k in ("none", "mean", "linear"))
    kept = 4 - len(REPLACED)
    expected_kv = sorted(f"past_key_values.{j}.{kv}" for j in range(kept) for kv in ("key", "value"))
    for counts, kv in ((plain, plain_kv), (mean, mean_kv), (linear, linear_kv)):
        assert counts.get("Softmax", 0) + sum(n for op, n in counts.items() if "Attention" in op) == kept
        assert kv == expected_kv
    assert linear.get("MatMul", 0) - plain.get("MatMul", 0) == len(REPLACED)  # one d x d product per replaced layer
    assert mean.get("MatMul", 0) == plain.get("MatMul", 0) and mean["Add"] - plain["Add"] == len(REPLACED)


@pytest.mark.onnx
@pytest.mark.parametrize("kind", ["mean", "linear"])
def test_onnx_logits_and_generation_match_pytorch(onnx_exports, kind):
    from optimum.onnxruntime import ORTModelForCausalLM

    _, exports = onnx_exports
    model, directory = exports[kind]
    for io_binding in (False, True):
        ort = ORTModelForCausalLM.from_pretrained(directory, use_io_binding=io_binding)
        kwargs = dict(
            attention_mask=MASK, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0,
            output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
        with torch.no_grad():
            torch.testing.assert_close(
                ort(PROMPT, attention_mask=MASK).logits[MASK.bool()],
                model(PROMPT, attention_mask=MASK).logits[MASK.bool()],
                rtol=1e-4,
                atol=1e-4,
            )
            from_ort, from_torch = ort.generate(PROMPT, **kwargs), model.generate(PROMPT, **kwargs)
        assert torch.equal(from_ort.sequences, from_torch.sequences)
        for step_ort, step_torch in zip(from_ort.logits, from_torch.logits, strict=True):
            torch.testing.assert_close(step_ort, step_torch, rtol=1e-4, atol=1e-4)
