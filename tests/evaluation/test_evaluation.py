"""Perplexity evaluation: the windowing scheme against a reference loop, PyTorch vs ONNX, bad inputs, real model."""

import json
import math

import pytest
import torch
from conftest import HAS_ONNX, TESTS, tiny_model, tiny_tokenizer

from optimum_gatenorm import (
    GateNormConfig,
    GateNormPruner,
    InvalidCheckpointError,
    InvalidConfigError,
    ModelNotFoundError,
    export_onnx,
    prune_model,
    resolve_model,
    save_pruned,
)
from optimum_gatenorm.evaluation.perplexity import (
    PerplexityResult,
    evaluate_perplexity,
    format_perplexity_table,
    perplexity,
    windows,
)
from optimum_gatenorm.text import bos_prefix


AUSTEN = TESTS / "data" / "pride_and_prejudice.txt"
TEXT = AUSTEN.read_text(encoding="utf-8")[:600]  # 600 characters = 600 tokens of the char-level tokenizer


def reference_perplexity(model, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """The transformers guide's sliding window, written out token by token: (perplexity, tokens scored)."""
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        chunk = torch.tensor([ids[begin:end]])
        with torch.no_grad():
            logits = model(chunk).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        for t in range(max(prev_end, begin + 1), end):  # each token once, never a window's first
            nll -= logp[t - begin - 1, ids[t]].item()
            count += 1
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll / count), count


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "austen.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    """{name: directory} for an unpruned and a pruned tiny llama, each saved as PyTorch and as ONNX."""
    root = tmp_path_factory.mktemp("evaluation")
    dirs = {}
    for name, pruned in (("original", []), ("pruned", [1, 2])):
        model = tiny_model("llama")
        if pruned:
            prune_model(model, pruned)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        dirs[name] = root / name
        if HAS_ONNX:
            export_onnx(root / name, root / f"{name}-onnx")
            dirs[f"{name}-onnx"] = root / f"{name}-onnx"
    return dirs


def test_windows_cover_every_token_once():
    assert windows(10, 4, 4) == [(0, 4, 1), (4, 8, 5), (8, 10, 9)]
    assert windows(9, 4, 4) == [(0, 4, 1), (4, 8, 5)]  # a last window of one token scores nothing: not run
    assert windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert windows(3, 8, 2) == [(0, 3, 1)]
    for n, w, s in [(100, 16, 16), (100, 16, 5), (101, 7, 1), (50, 50, 50)]:
        scored = [t for _, end, first in windows(n, w, s) for t in range(first, end)]
        assert len(scored) == len(set(scored))
        expected = n - 1 if s < w else n - math.ceil(n / w)
        assert len(scored) == expected, (n, w, s)


@pytest.mark.parametrize("window,stride", [(64, None), (64, 16), (50, 49), (128, 1000 // 9)])
def test_perplexity_matches_reference_loop(model, tokenizer, window, stride):
    result = perplexity(model, tokenizer, TEXT, window=window, stride=stride)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) == 600
    expected, count = reference_perplexity(model, ids, window, stride or window)
    assert result.num_tokens == count
    assert result.perplexity == pytest.approx(expected, rel=1e-9)
    assert result.nll == pytest.approx(math.log(expected), rel=1e-9)
    assert result.stride == (stride or window) and result.window == window
    assert result.backend == "pytorch" and result.text_tokens == 600
    assert 1 < result.perplexity < 1000  # random tiny model over a vocab of 128


def test_overlapping_windows_give_more_context_and_score_all_but_the_first_token(model, tokenizer):
    chunks = perplexity(model, tokenizer, TEXT, window=32)
    sliding = perplexity(model, tokenizer, TEXT, window=32, stride=8)
    assert chunks.num_tokens == 600 - math.ceil(600 / 32) and chunks.num_windows == math.ceil(600 / 32)
    assert sliding.num_tokens == 599 and sliding.num_windows == (600 - 32) // 8 + 1
    assert sliding.perplexity != pytest.approx(chunks.perplexity, rel=1e-6)


def test_bos_is_context_only_and_needs_a_bos_token(model, tokenizer):
    """`bos=True`: each window runs as [BOS] + window; the same tokens are scored, each once."""
    with pytest.raises(InvalidConfigError, match="no BOS token"):
        perplexity(model, tokenizer, TEXT, window=64, bos=True)
    with_bos = tiny_tokenizer()
    with_bos.bos_token = "<eos>"  # any token will do for the scheme; the tiny vocabulary has no <bos>
    bos_id = with_bos.bos_token_id
    ids = with_bos(TEXT, add_special_tokens=False)["input_ids"]
    nll, count = 0.0, 0
    for start, end, first in windows(len(ids), 64, 64):
        with torch.no_grad():
            logits = model(torch.tensor([[bos_id, *ids[start:end]]])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        for t in range(first, end):  # position of ids[t] in the input is t - start + 1
            nll -= logp[t - start, ids[t]].item()
            count += 1
    result = perplexity(model, with_bos, TEXT, window=64, bos=True)
    plain = perplexity(model, with_bos, TEXT, window=64, bos=False)
    assert bos_prefix(with_bos) == [] and perplexity(model, with_bos, TEXT, window=64).perplexity == plain.perplexity
    assert result.bos and not plain.bos and result.num_tokens == plain.num_tokens == count
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-9)
    assert result.perplexity != pytest.approx(plain.perplexity, rel=1e-6)


def test_default_bos_follows_the_tokenizer(tokenizer):
    """`bos=None` puts BOS in front exactly where the tokenizer adds one when it encodes text."""
    from tokenizers.processors import TemplateProcessing

    adding = tiny_tokenizer()
    adding.bos_token = "<eos>"
    bos_id = adding.bos_token_id
    assert bos_prefix(adding) == [] and bos_prefix(adding, True) == [bos_id] and bos_prefix(adding, False) == []
    adding._tokenizer.post_processor = TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", bos_id)])
    assert adding("a")["input_ids"][0] == bos_id
    assert bos_prefix(adding) == [bos_id] and bos_prefix(adding, False) == []
    # calibration windows follow the same rule, and bos= chooses
    from optimum_gatenorm import Calibration

    windows = {
        bos: Calibration.from_text(TEXT, adding, num_samples=2, length=8, bos=bos).input_ids
        for bos in (None, True, False)
    }
    assert windows[None].shape == windows[True].shape == (2, 9) and windows[False].shape == (2, 8)
    assert (windows[None][:, 0] == bos_id).all() and torch.equal(windows[None][:, 1:], windows[False])
    plain = tiny_tokenizer()
    plain.bos_token = "<eos>"
    assert Calibration.from_text(TEXT, plain, num_samples=2, length=8).input_ids.shape == (2, 8)
    assert (Calibration.from_text(TEXT, plain, num_samples=2, length=8, bos=True).input_ids[:, 0] == bos_id).all()


def test_max_tokens_caps_the_text(model, tokenizer):
    result = perplexity(model, tokenizer, TEXT, window=64, max_tokens=100)
    assert result.text_tokens == 100 and result.max_tokens == 100
    assert result.num_tokens == 100 - 2 and result.num_windows == 2
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"][:100]
    assert result.perplexity == pytest.approx(reference_perplexity(model, ids, 64, 64)[0], rel=1e-9)
    # Shorter than the cap: the whole text.
    short = perplexity(model, tokenizer, TEXT[:40], window=64, max_tokens=100)
    assert short.text_tokens == 40 and short.num_tokens == 39


def test_progress_bar_counts_windows(model, tokenizer, capsys):
    perplexity(model, tokenizer, TEXT, window=64, progress=True)
    assert "10/10" in capsys.readouterr().err
    perplexity(model, tokenizer, TEXT, window=64)
    assert capsys.readouterr().err == ""


def test_result_serialises_and_formats(model, tokenizer, tmp_path):
    result = perplexity(model, tokenizer, TEXT, window=64, model_name="tiny", text_file="austen.txt")
    data = json.loads(result.to_json())
    assert data["perplexity"] == result.perplexity and data["model"] == "tiny" and data["num_tokens"] == 590
    assert (
        data["window"] == 64 and data["stride"] == 64 and data["backend"] == "pytorch" and "gatenorm_version" in data
    )
    saved = json.loads(result.save(tmp_path / "ppl.json").read_text())
    assert saved == data
    fields = {k: v for k, v in data.items() if k != "gatenorm_version"}
    assert PerplexityResult(**fields) == result
    table = format_perplexity_table([result, result], names=["a", "bb"])
    lines = table.splitlines()
    assert lines[0].split() == ["model", "backend", "perplexity", "nll", "tokens", "windows", "seconds"]
    assert lines[2].split()[:3] == ["a", "pytorch", f"{result.perplexity:.4f}"]
    assert lines[-1] == "(window=64, stride=64)"
    assert result.to_table().splitlines()[2].startswith("tiny ")
    overflow = PerplexityResult(**{**fields, "perplexity": math.inf, "nll": 800.0})
    assert json.loads(overflow.to_json())["perplexity"] is None


@pytest.mark.onnx
@pytest.mark.parametrize("which", ["original", "pruned"])
def test_pytorch_and_onnx_agree(saved, text_file, which):
    assert (saved[f"{which}-onnx"] / "tokenizer.json").is_file()  # export_onnx copied it
    kwargs = dict(window=100, stride=40, max_tokens=500)
    from_torch = evaluate_perplexity(saved[which], text_file, **kwargs)
    from_onnx = evaluate_perplexity(saved[f"{which}-onnx"], text_file, **kwargs)
    assert (from_torch.backend, from_onnx.backend) == ("pytorch", "onnxruntime")
    assert from_torch.num_tokens == from_onnx.num_tokens == 499
    assert from_onnx.perplexity == pytest.approx(from_torch.perplexity, rel=1e-3)
    assert from_torch.model == str(saved[which]) and from_torch.text_file == str(text_file)


def test_pruning_changes_the_perplexity(saved, text_file):
    original = evaluate_perplexity(saved["original"], text_file, window=64)
    pruned = evaluate_perplexity(saved["pruned"], text_file, window=64)
    assert math.isfinite(pruned.perplexity)
    assert pruned.perplexity != pytest.approx(original.perplexity, rel=1e-3)


def test_bad_text_files(saved, tmp_path):
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"\x7fELF\x00\x01\x02" * 10)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    one_token = tmp_path / "one.txt"
    one_token.write_text("a")
    for path, error, words in [
        (binary, InvalidConfigError, "binary"),
        (empty, InvalidConfigError, "empty"),
        (latin1, InvalidConfigError, "UTF-8"),
        (tmp_path / "missing.txt", ModelNotFoundError, "does not exist"),
        (tmp_path, InvalidConfigError, "not a file"),
        (one_token, InvalidConfigError, "at least 2"),
    ]:
        with pytest.raises(error, match=words) as info:
            evaluate_perplexity(saved["original"], path, window=16)
        assert "\n" not in str(info.value)


@pytest.mark.onnx
@pytest.mark.parametrize(
    "options,words",
    [
        (dict(window=1), "window must be an integer >= 2, got 1"),
        (dict(window=0), "window must be"),
        (dict(window=2.5), "window must be"),
        (dict(window=16, stride=0), "stride must be an integer >= 1, got 0"),
        (dict(window=16, stride=17), "stride=17 is larger than window=16"),
        (dict(window=16, max_tokens=1), "max_tokens must be an integer >= 2, got 1"),
        (dict(window=16, max_tokens=True), "max_tokens must be"),
        (dict(window=129), "longer than the model's 128 positions"),
    ],
)
def test_bad_windowing_options(model, tokenizer, saved, text_file, options, words):
    with pytest.raises(InvalidConfigError, match=words) as info:
        perplexity(model, tokenizer, TEXT, **options)
    assert "\n" not in str(info.value)
    if "positions" not in words:  # checked before anything is read or loaded
        with pytest.raises(InvalidConfigError, match=words):
            evaluate_perplexity(saved["original"], text_file / "never-read", **options)
    else:
        with pytest.raises(InvalidConfigError, match=words):
            evaluate_perplexity(saved["original-onnx"], text_file, **options)


@pytest.mark.onnx
def test_model_without_tokenizer_or_missing(tmp_path, text_file):
    bare = tmp_path / "bare"
    tiny_model("llama").save_pretrained(bare)
    with pytest.raises(InvalidCheckpointError, match="has no tokenizer") as info:
        evaluate_perplexity(bare, text_file, window=16)
    assert "\n" not in str(info.value)
    onnx_bare = tmp_path / "onnx-bare"
    export_onnx(bare, onnx_bare, validate=False)
    assert (onnx_bare / "model.onnx").is_file()
    with pytest.raises(InvalidCheckpointError, match="has no tokenizer"):
        evaluate_perplexity(onnx_bare, text_file, window=16)
    with pytest.raises(ModelNotFoundError, match="not found"):
        evaluate_perplexity(tmp_path / "nowhere", text_file, window=16)


@pytest.mark.onnx
@pytest.mark.real
def test_real_model_perplexity_pytorch_onnx_and_pruned(tmp_path):
    real = resolve_model("smollm2-135m")
    model, report = GateNormPruner.from_pretrained(real).prune(GateNormConfig(num_layers=4, replacement="none"))
    save_pruned(model, tmp_path / "pruned")
    export_onnx(model, tmp_path / "pruned-onnx", validate=False)
    del model
    kwargs = dict(window=512, stride=256, max_tokens=1000)

    original = evaluate_perplexity(real, AUSTEN, **kwargs)
    pruned = evaluate_perplexity(tmp_path / "pruned", AUSTEN, **kwargs)
    pruned_onnx = evaluate_perplexity(tmp_path / "pruned-onnx", AUSTEN, **kwargs)
    print()
    print(format_perplexity_table([original, pruned, pruned_onnx], names=["original", "pruned 4", "pruned 4 onnx"]))

    assert original.text_tokens == 1000 and original.num_tokens == 999 and original.num_windows == 3
    assert 5 < original.perplexity < 100
    assert math.isfinite(pruned.perplexity) and pruned.perplexity > original.perplexity * 0.9
    assert pruned_onnx.backend == "onnxruntime" and pruned_onnx.num_tokens == 999
    assert pruned_onnx.perplexity == pytest.approx(pruned.perplexity, rel=1e-3)
