"""ONNX export of pruned models: graph structure and parity with PyTorch through ORTModelForCausalLM."""

import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ALL_TINY, HAS_ONNX, SKIP_ONNX, tiny_config, tiny_model


if not HAS_ONNX:
    pytest.skip(SKIP_ONNX, allow_module_level=True)
import onnx  # noqa: E402
from optimum.onnxruntime import ORTModelForCausalLM  # noqa: E402

from optimum_gatenorm import (
    ExportError,
    InvalidConfigError,
    OutputExistsError,
    UnsupportedModelError,
    export_onnx,
    prune_model,
)
from optimum_gatenorm.checkpoints.record import GATENORM_QUANT_METHOD
from optimum_gatenorm.exporters.onnx import check_onnx_exportable, check_onnx_logits


def _exportable(name: str) -> bool:
    try:
        check_onnx_exportable(tiny_config(name))
    except UnsupportedModelError:
        return False
    return True


# Every tiny model (registered architectures and variants) in a shape onnxruntime can run, as the exporter's own
# up-front check decides (tiny phi3 is GQA: see the refusal test); a new adapter joins automatically.
EXPORTABLE = [name for name in sorted(ALL_TINY) if _exportable(name)]
PRUNED = [0, 2]  # layer 0 included
PROMPT = torch.tensor([[3, 9, 27, 81, 115, 12, 40], [0, 0, 0, 7, 21, 63, 101]])
MASK = torch.tensor([[1] * 7, [0, 0, 0, 1, 1, 1, 1]])


@pytest.fixture(scope="module", params=EXPORTABLE)
def exported(request, tmp_path_factory):
    """(name, pruned PyTorch model, ONNX dir, unpruned PyTorch model, unpruned ONNX dir)."""
    name = request.param
    root = tmp_path_factory.mktemp(f"onnx-{name}")
    original = tiny_model(name)
    export_onnx(original, root / "original")
    pruned = tiny_model(name)
    prune_model(pruned, PRUNED)
    export_onnx(pruned, root / "pruned")
    return name, pruned, root / "pruned", original, root / "original"


def _graph(directory):
    return onnx.load(str(directory / "model.onnx"), load_external_data=False).graph


@pytest.mark.parametrize("which", ["pruned", "original"])
def test_graph_has_attention_and_kv_for_kept_layers_only(exported, which):
    _, pruned, pruned_dir, original, original_dir = exported
    directory, expected = (pruned_dir, 4 - len(PRUNED)) if which == "pruned" else (original_dir, 4)
    graph = _graph(directory)
    softmax = sum(node.op_type == "Softmax" for node in graph.node)
    fused = sum("Attention" in node.op_type for node in graph.node)
    assert softmax + fused == expected
    kv_inputs = [i.name for i in graph.input if i.name.startswith("past_key_values.")]
    kv_outputs = [o.name for o in graph.output if o.name.startswith("present.")]
    assert sorted(kv_inputs) == sorted(f"past_key_values.{j}.{kv}" for j in range(expected) for kv in ("key", "value"))
    assert len(kv_outputs) == 2 * expected
    assert (directory / "config.json").is_file() and (directory / "generation_config.json").is_file()


def test_post_export_check_passes_the_export_and_warns_on_a_wrong_graph(exported, caplog):
    _, pruned, pruned_dir, original, _ = exported
    with caplog.at_level(logging.INFO, logger="optimum_gatenorm"):
        assert check_onnx_logits(pruned, pruned_dir / "model.onnx") < 1e-3
    assert [r.levelno for r in caplog.records] == [logging.INFO], caplog.text
    assert "match PyTorch within" in caplog.text and "1e-04 + 1e-04 x |logit|" in caplog.text
    caplog.clear()
    # the unpruned model against the pruned graph: two attention sublayers missing, as a wrong export would be
    with caplog.at_level(logging.INFO, logger="optimum_gatenorm"):
        check_onnx_logits(original, pruned_dir / "model.onnx")
    assert [r.levelno for r in caplog.records] == [logging.WARNING], caplog.text
    assert "differ from PyTorch's by up to" in caplog.text


@pytest.mark.parametrize("which", ["pruned", "original"])
def test_logits_match_pytorch_on_prompt_and_every_cached_step(exported, which):
    _, pruned, pruned_dir, original, original_dir = exported
    model, directory = (pruned, pruned_dir) if which == "pruned" else (original, original_dir)
    ort = ORTModelForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        torch.testing.assert_close(
            ort(PROMPT, attention_mask=MASK).logits[MASK.bool()],
            model(PROMPT, attention_mask=MASK).logits[MASK.bool()],
            rtol=1e-4,
            atol=1e-4,
        )
        kwargs = dict(
            attention_mask=MASK,
            max_new_tokens=8,
            min_new_tokens=8,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
        from_ort = ort.generate(PROMPT, **kwargs)
        from_torch = model.generate(PROMPT, **kwargs)
    assert torch.equal(from_ort.sequences, from_torch.sequences)
    for step_ort, step_torch in zip(from_ort.logits, from_torch.logits, strict=True):
        torch.testing.assert_close(step_ort, step_torch, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("which", ["pruned", "original"])
@pytest.mark.parametrize("io_binding", [False, True], ids=["no_io_binding", "io_binding"])
@pytest.mark.parametrize("beams", [1, 3], ids=["greedy", "beam3"])
def test_generate_tokens_identical(exported, io_binding, beams, which):
    _, pruned, pruned_dir, original, original_dir = exported
    model, directory = (pruned, pruned_dir) if which == "pruned" else (original, original_dir)
    ort = ORTModelForCausalLM.from_pretrained(directory, use_io_binding=io_binding)
    assert ort.use_io_binding == io_binding
    kwargs = dict(attention_mask=MASK, max_new_tokens=8, min_new_tokens=8, do_sample=False, num_beams=beams)
    with torch.no_grad():
        assert torch.equal(
            ort.generate(PROMPT, pad_token_id=0, **kwargs), model.generate(PROMPT, pad_token_id=0, **kwargs)
        )


def test_config_keeps_the_pruning_record(exported):
    import json

    _, _, pruned_dir, _, original_dir = exported
    record = json.loads((pruned_dir / "config.json").read_text())["quantization_config"]
    assert record["quant_method"] == GATENORM_QUANT_METHOD and record["pruned_attention_layers"] == PRUNED
    assert "quantization_config" not in json.loads((original_dir / "config.json").read_text())


@pytest.mark.process
def test_fresh_process_loads_with_plain_ort_model(tmp_path):
    model = tiny_model("llama")
    prune_model(model, PRUNED)
    export_onnx(model, tmp_path / "onnx")
    with torch.no_grad():
        expected = model.generate(PROMPT[:1], max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    script = textwrap.dedent(
        """
        import sys, torch
        from optimum.onnxruntime import ORTModelForCausalLM
        model = ORTModelForCausalLM.from_pretrained(sys.argv[1])
        ids = torch.tensor([[3, 9, 27, 81, 115, 12, 40]])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
                             do_sample=False, pad_token_id=0)
        print("TOKENS", out[0].tolist(), "optimum_gatenorm" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "onnx")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"TOKENS {expected[0].tolist()} False" in result.stdout


def test_from_checkpoint_path(tmp_path):
    model = tiny_model("gpt2")
    prune_model(model, [1])
    model.save_pretrained(tmp_path / "ckpt")
    export_onnx(tmp_path / "ckpt", tmp_path / "onnx")
    ort = ORTModelForCausalLM.from_pretrained(tmp_path / "onnx")
    mask = torch.ones_like(PROMPT[:1])
    with torch.no_grad():
        torch.testing.assert_close(
            ort(PROMPT[:1], attention_mask=mask).logits,
            model(PROMPT[:1], attention_mask=mask).logits,
            rtol=1e-4,
            atol=1e-4,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "onnx"]  # no temporary directory left


def test_phi3_with_grouped_query_attention_is_refused_up_front(tmp_path):
    model = tiny_model("phi3")
    with pytest.raises(UnsupportedModelError, match="grouped-query"):
        export_onnx(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_options_and_existing_output(tmp_path):
    model = tiny_model("llama")
    with pytest.raises(InvalidConfigError, match="float16 export needs `device='cuda'`"):
        export_onnx(model, tmp_path / "a", dtype="fp16")
    with pytest.raises(InvalidConfigError, match="device"):
        export_onnx(model, tmp_path / "a", device="tpu")
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        export_onnx(model, tmp_path / "exists")
    assert (tmp_path / "exists" / "keep.txt").read_text() == "mine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is missing")
def test_cuda_requested_without_cuda_fails_naming_the_missing_piece(tmp_path):
    import onnxruntime

    with pytest.raises(InvalidConfigError) as error:
        export_onnx(tiny_model("llama"), tmp_path / "out", device="cuda")
    message = str(error.value)
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "no CUDAExecutionProvider" in message and "onnxruntime-gpu" in message
    else:
        assert "torch" in message
    assert "\n" not in message and not (tmp_path / "out").exists()


def test_failed_export_leaves_nothing(tmp_path):
    with pytest.raises(ExportError, match="nothing was written"):
        export_onnx(tiny_model("llama"), tmp_path / "out", opset=9)  # too old for this graph
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_export_generates_like_pytorch(tmp_path):
    model = tiny_model("llama", dtype=torch.float16).to("cuda")
    prune_model(model, PRUNED)
    export_onnx(model, tmp_path / "onnx", device="cuda", dtype="fp16")
    ort = ORTModelForCausalLM.from_pretrained(tmp_path / "onnx", provider="CUDAExecutionProvider")
    assert ort.providers[0] == "CUDAExecutionProvider"
    ids = PROMPT[:1].to("cuda")
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(ort.generate(ids, **kwargs).cpu(), model.generate(ids, **kwargs).cpu())


@pytest.mark.process
def test_plain_optimum_cli_export_of_a_pruned_checkpoint_cannot_go_wrong(tmp_path):
    """`optimum-cli export onnx` reloads through AutoModel, which the tombstone stops (no random attention)."""
    from pathlib import Path

    model = tiny_model("llama")
    prune_model(model, [1])
    model.save_pretrained(tmp_path / "ckpt")
    cli = Path(sys.executable).parent / "optimum-cli"
    result = subprocess.run(
        [
            str(cli),
            "export",
            "onnx",
            "--model",
            str(tmp_path / "ckpt"),
            "--task",
            "text-generation-with-past",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert "size mismatch" in result.stderr
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_export_refuses_bad_inputs_and_leaves_nothing(tmp_path):
    import json

    from optimum_gatenorm import InvalidCheckpointError, ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        export_onnx(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidCheckpointError, match="config.json"):
        export_onnx(tmp_path / "empty", tmp_path / "out")
    model = tiny_model("llama")
    prune_model(model, [1])
    model.save_pretrained(tmp_path / "bad_record")
    config = json.loads((tmp_path / "bad_record" / "config.json").read_text())
    config["quantization_config"]["num_attention_layers"] = 1  # 4 layers minus 1 pruned is 3
    (tmp_path / "bad_record" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidCheckpointError, match="inconsistent"):
        export_onnx(tmp_path / "bad_record", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_only_the_known_benign_exporter_messages_are_filtered():
    import logging

    from optimum_gatenorm.exporters.onnx import _BenignLogFilter

    def kept(message: str) -> bool:
        return _BenignLogFilter().filter(logging.LogRecord("optimum", logging.WARNING, "", 0, message, None, None))

    assert not kept("Found different candidate ONNX initializers (likely duplicate) for the tied weights:")
    assert not kept("\tlm_head.weight: {'onnx::MatMul_8649'}")
    assert not kept("\tmodel.embed_tokens.weight: {'model.embed_tokens.weight'}")
    assert not kept("The groups of weights [['a', 'b']] will not be tied as either already tied or ...")
    assert kept("The ONNX export succeeded with the warning: max diff 0.5")
    assert kept("\tsomething else entirely")
    assert kept("Opset 12 is lower than the recommended minimum opset")
