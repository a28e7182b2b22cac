"""What users feel: KL divergence and top-1 agreement against a reference (`eval --reference`), chat fidelity."""

import copy
import json
import math
import os
import subprocess

import pytest
import torch
from cli_support import OPTIMUM_CLI
from conftest import TESTS, tiny_model, tiny_tokenizer

from optimum_gatenorm import InvalidConfigError, ModelNotFoundError, export_onnx, prune_model
from optimum_gatenorm.evaluation import divergence
from optimum_gatenorm.evaluation.chat import (
    CHAT_PROMPTS,
    ChatAnswer,
    ChatFidelityResult,
    ChatPair,
    chat_answers,
    chat_fidelity,
    evaluate_chat_fidelity,
    first_sentence,
)
from optimum_gatenorm.evaluation.compare import mask_attention
from optimum_gatenorm.evaluation.divergence import TokenTally, percentile
from optimum_gatenorm.evaluation.perplexity import (
    PerplexityResult,
    evaluate_perplexity,
    format_perplexity_table,
    perplexity,
    windows,
)


AUSTEN = TESTS / "data" / "pride_and_prejudice.txt"
TEXT = AUSTEN.read_text(encoding="utf-8")[:600]  # 600 tokens of the char-level tokenizer
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def pruned(model):
    pruned = copy.deepcopy(model)
    prune_model(pruned, [1, 2])
    return pruned


def brute_force(model, reference, ids, window, stride, prefix=()):
    """KL(reference || model) and top-1 agreement position by position, with torch's own kl_div: (kl list, agree)."""
    kls, agree = [], 0
    for start, end, first in windows(len(ids), window, stride):
        chunk = torch.tensor([[*prefix, *ids[start:end]]])
        with torch.no_grad():
            q = torch.log_softmax(model(chunk).logits[0].double(), -1)
            p = torch.log_softmax(reference(chunk).logits[0].double(), -1)
        for t in range(first, end):
            row = t - start - 1 + len(prefix)
            kls.append(torch.nn.functional.kl_div(q[row], p[row], log_target=True, reduction="sum").item())
            agree += int(q[row].argmax() == p[row].argmax())
    return kls, agree


def test_percentile_interpolates_like_numpy():
    import numpy

    values = [0.3, 5.0, 0.1, 2.0, 0.7, 0.0, 9.5]
    for fraction in (0.0, 0.5, 0.9, 0.99, 1.0):
        assert percentile(values, fraction) == pytest.approx(numpy.percentile(values, 100 * fraction), rel=1e-12)
    assert percentile(list(range(101)), 0.99) == pytest.approx(99.0)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.99) == pytest.approx(3.97)  # 0.99 * 3 = 2.97: 3 + 0.97 * (4 - 3)
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_kl_and_top1_by_hand():
    """Two positions, three tokens: KL(p || q) = sum p (log p - log q), written out."""
    reference = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.5, 2.0]])
    targets = torch.tensor([0, 2])

    def softmax(row):
        exps = [math.exp(x) for x in row]
        return [e / sum(exps) for e in exps]

    expected = []
    for r, m in zip(reference.tolist(), logits.tolist(), strict=True):
        p, q = softmax(r), softmax(m)
        expected.append(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True)))
    nll = -math.log(softmax(logits[0].tolist())[0]) - math.log(softmax(logits[1].tolist())[2])

    tally = TokenTally()
    tally.add(logits, targets, reference)
    result = tally.divergence()
    assert tally.count == 2 and tally.nll == pytest.approx(nll / 2, rel=1e-12)
    assert result["kl_mean"] == pytest.approx(sum(expected) / 2, rel=1e-12)
    assert result["kl_p99"] == pytest.approx(min(expected) + 0.99 * abs(expected[1] - expected[0]), rel=1e-12)
    assert result["kl_max"] == pytest.approx(max(expected), rel=1e-12)
    assert result["top1_agreement"] == 0.5  # position 0: token 0 vs 1; position 1: token 2 both
    with pytest.raises(InvalidConfigError, match="same vocabulary"):
        TokenTally().add(logits, targets, reference[:, :2])


def test_a_model_against_itself_is_zero_and_agrees_everywhere(model, tokenizer):
    result = perplexity(model, tokenizer, TEXT, window=64, reference=model)
    assert (result.kl_mean, result.kl_p99, result.kl_max, result.top1_agreement) == (0.0, 0.0, 0.0, 1.0)
    assert result.reference_perplexity == result.perplexity and result.reference == ""
    assert result.reference_backend == "pytorch"
    plain = perplexity(model, tokenizer, TEXT, window=64)
    assert plain.perplexity == pytest.approx(result.perplexity, rel=1e-12)
    assert (plain.kl_mean, plain.kl_p99, plain.top1_agreement, plain.reference_perplexity) == (None,) * 4


@pytest.mark.parametrize("window,stride,bos", [(64, None, False), (100, 40, False), (64, None, True)])
def test_a_pruned_model_against_its_original_matches_a_position_by_position_loop(
    model, pruned, window, stride, bos, monkeypatch
):
    tokenizer = tiny_tokenizer()
    if bos:
        tokenizer.bos_token = "<eos>"  # any token does for the scheme: the tiny vocabulary has no <bos>
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    prefix = [tokenizer.bos_token_id] if bos else []
    kls, agree = brute_force(pruned, model, ids, window, stride or window, prefix)
    monkeypatch.setattr(
        divergence, "_CHUNK_ELEMENTS", 128 * 7
    )  # 7 positions per float64 chunk: chunks must not matter
    result = perplexity(pruned, tokenizer, TEXT, window=window, stride=stride, bos=bos, reference=model)
    assert result.num_tokens == len(kls) and result.bos == bos
    assert result.kl_mean == pytest.approx(sum(kls) / len(kls), rel=1e-9) and result.kl_mean > 0.05
    assert result.kl_p99 == pytest.approx(percentile(kls, 0.99), rel=1e-9) and result.kl_p99 > result.kl_mean
    assert result.kl_max == pytest.approx(max(kls), rel=1e-9)
    assert result.top1_agreement == agree / len(kls) and 0 < result.top1_agreement < 1
    original = perplexity(model, tokenizer, TEXT, window=window, stride=stride, bos=bos)
    assert result.reference_perplexity == pytest.approx(original.perplexity, rel=1e-12)


def test_the_result_serialises_and_the_table_shows_the_divergence(model, pruned, tokenizer):
    result = perplexity(pruned, tokenizer, TEXT, window=64, reference=model, model_name="p", reference_name="orig")
    data = json.loads(result.to_json())
    assert {"kl_mean", "kl_p99", "kl_max", "top1_agreement", "reference_perplexity"} <= set(data)
    assert data["reference"] == "orig" and data["kl_mean"] == result.kl_mean
    assert PerplexityResult(**{k: v for k, v in data.items() if k != "gatenorm_version"}) == result
    lines = format_perplexity_table([result]).splitlines()
    assert lines[0].split()[-3:] == ["kl_mean", "kl_p99", "top1"]
    assert lines[2].split()[-3:] == [f"{result.kl_mean:.5f}", f"{result.kl_p99:.5f}", f"{result.top1_agreement:.4f}"]
    assert f"reference: orig (pytorch), perplexity {result.reference_perplexity:.4f}" in lines[-1]
    plain = perplexity(pruned, tokenizer, TEXT, window=64)
    assert "kl_mean" not in format_perplexity_table([plain])
    both = format_perplexity_table([plain, result], names=["plain", "compared"]).splitlines()
    assert both[2].split()[-3:] == ["-", "-", "-"]


def test_an_in_memory_reference_with_another_vocabulary_is_refused(model, tokenizer):
    with pytest.raises(InvalidConfigError, match="vocab_size=256, the model 128"):
        perplexity(model, tokenizer, TEXT, window=64, reference=tiny_model("llama", vocab_size=256))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model, pruned, chat_tokenizer):
    root = tmp_path_factory.mktemp("quality")
    for name, m in (("original", model), ("pruned", pruned)):
        m.save_pretrained(root / name)
        chat_tokenizer.save_pretrained(root / name)
    (root / "text.txt").write_text(TEXT, encoding="utf-8")
    return root


def test_evaluate_with_a_reference_path(saved):
    result = evaluate_perplexity(saved / "pruned", saved / "text.txt", window=64, reference=saved / "original")
    assert result.reference == str(saved / "original") and result.reference_backend == "pytorch"
    assert result.kl_mean > 0 and result.top1_agreement < 1
    itself = evaluate_perplexity(saved / "original", saved / "text.txt", window=64, reference=saved / "original")
    assert (itself.kl_mean, itself.top1_agreement) == (0.0, 1.0)


def test_references_that_cannot_be_compared_are_refused_before_loading(saved, tmp_path, monkeypatch):
    from tokenizers import normalizers

    import optimum_gatenorm.evaluation.perplexity as module

    monkeypatch.setattr(module, "load_causal_lm", lambda *a, **k: pytest.fail("a model was loaded"))
    text = saved / "text.txt"
    lowercase = tmp_path / "lowercase"  # the same vocabulary, but it splits the text into other tokens
    tiny_model("llama").save_pretrained(lowercase)
    tokenizer = tiny_tokenizer()
    tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.save_pretrained(lowercase)
    wider = tmp_path / "wider"
    tiny_model("llama", vocab_size=256).save_pretrained(wider)
    tiny_tokenizer().save_pretrained(wider)
    bos = tmp_path / "bos"
    tiny_model("llama").save_pretrained(bos)
    tokenizer = tiny_tokenizer()
    tokenizer.bos_token = "<eos>"
    tokenizer.save_pretrained(bos)
    for reference, error, words in [
        (tmp_path / "missing", ModelNotFoundError, "reference model .* not found"),
        (wider, InvalidConfigError, "vocab_size=256, the model .* vocab_size=128"),
        (lowercase, InvalidConfigError, "tokenizes the text differently"),
        (bos, InvalidConfigError, "bos_token_id=2, the model .* bos_token_id=None"),
    ]:
        with pytest.raises(error, match=words) as info:
            evaluate_perplexity(saved / "pruned", text, window=64, reference=reference)
        assert "\n" not in str(info.value)
    with pytest.raises(ModelNotFoundError, match="reference model"):
        evaluate_chat_fidelity(saved / "pruned", tmp_path / "missing")


@pytest.mark.onnx
def test_onnx_against_its_own_pytorch_checkpoint_is_near_zero(saved, tmp_path):
    export_onnx(saved / "pruned", tmp_path / "onnx")
    onnx_vs_torch = evaluate_perplexity(tmp_path / "onnx", saved / "text.txt", window=64, reference=saved / "pruned")
    torch_vs_onnx = evaluate_perplexity(saved / "pruned", saved / "text.txt", window=64, reference=tmp_path / "onnx")
    assert onnx_vs_torch.backend == "onnxruntime" and onnx_vs_torch.reference_backend == "pytorch"
    assert torch_vs_onnx.reference_backend == "onnxruntime"
    for result in (onnx_vs_torch, torch_vs_onnx):
        assert result.kl_mean < 1e-9 and result.kl_p99 < 1e-8 and result.top1_agreement >= 0.99
    against_original = evaluate_perplexity(
        tmp_path / "onnx", saved / "text.txt", window=64, reference=saved / "original"
    )
    assert against_original.kl_mean > 0.05


# --- chat fidelity --------------------------------------------------------------------------------------------------


def test_first_sentence_and_a_pair_by_hand():
    assert first_sentence("  The capital of France is Paris. It is big.") == "The capital of France is Paris."
    assert first_sentence("Paris!\nMore") == "Paris!" and first_sentence("3.5 is a number") == "3.5 is a number"
    assert first_sentence("line one\nline two") == "line one"
    pair = ChatPair.of(ChatAnswer("q", [5, 6, 7, 8], "Paris. Yes."), ChatAnswer("q", [5, 6, 9], "Paris. No."))
    assert pair.first_sentence_match and not pair.exact_match
    assert pair.common_prefix_tokens == 2 and pair.token_agreement == 0.5
    assert ChatPair.of(ChatAnswer("q", [], ""), ChatAnswer("q", [], "")).token_agreement == 1.0
    with pytest.raises(InvalidConfigError, match="different prompts"):
        ChatPair.of(ChatAnswer("a", [], ""), ChatAnswer("b", [], ""))


def test_chat_fidelity_of_a_model_with_itself_and_a_pruned_copy(model, pruned, chat_tokenizer):
    answers = chat_answers(model, chat_tokenizer, max_new_tokens=12)
    assert [a.prompt for a in answers] == list(CHAT_PROMPTS) and 5 <= len(answers) <= 8
    assert all(a.token_ids for a in answers)
    # the prompt went through the template: the answer is what follows "<user>...\n<assistant>"
    prompt = chat_tokenizer.apply_chat_template(
        [{"role": "user", "content": CHAT_PROMPTS[0]}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([chat_tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        manual = []
        for _ in range(len(answers[0].token_ids)):
            token = model(torch.cat([ids, torch.tensor([manual], dtype=torch.long)], 1)).logits[0, -1].argmax()
            manual.append(int(token))
    assert answers[0].token_ids == manual

    itself = chat_fidelity(model, chat_tokenizer, model, max_new_tokens=12)
    assert itself.chat_template and itself.max_new_tokens == 12
    assert (itself.first_sentence_agreement, itself.token_agreement, itself.exact_match) == (1.0, 1.0, 1.0)
    other = chat_fidelity(pruned, chat_tokenizer, answers, max_new_tokens=12)  # reference answers reused
    assert other.token_agreement < 1 and other.exact_match < 1
    assert [p.reference_answer for p in other.pairs] == [a.text for a in answers]
    # a model masked in memory (as `compare` does) answers exactly as the pruned copy
    with mask_attention(model, [1, 2]):
        masked = chat_fidelity(model, chat_tokenizer, answers, max_new_tokens=12)
    assert [p.answer for p in masked.pairs] == [p.answer for p in other.pairs]
    data = json.loads(other.to_json())
    assert ChatFidelityResult.from_dict(data) == other and len(data["pairs"]) == len(CHAT_PROMPTS)
    table = other.to_table()
    assert table.count("Q: ") == len(CHAT_PROMPTS) and "chat template" in table.splitlines()[-1]


def test_without_a_chat_template_the_prompt_is_plain_text(model, tokenizer):
    result = chat_fidelity(model, tokenizer, model, prompts=["Hello"], max_new_tokens=4)
    assert not result.chat_template and result.exact_match == 1.0
    ids = tokenizer("Hello", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        first = int(model(ids).logits[0, -1].argmax())
    assert chat_answers(model, tokenizer, ["Hello"], max_new_tokens=1)[0].token_ids in ([first], [])
    with pytest.raises(InvalidConfigError, match="max_new_tokens"):
        chat_answers(model, tokenizer, max_new_tokens=0)
    with pytest.raises(InvalidConfigError, match="prompts"):
        chat_answers(model, tokenizer, "Hello")


def test_evaluate_chat_fidelity_from_paths(saved):
    result = evaluate_chat_fidelity(saved / "pruned", saved / "original", max_new_tokens=8)
    assert result.model == str(saved / "pruned") and result.reference == str(saved / "original")
    assert result.token_agreement < 1
    assert evaluate_chat_fidelity(saved / "original", saved / "original", max_new_tokens=8).exact_match == 1.0


@pytest.mark.process
def test_eval_reference_and_chat_through_the_cli(saved, tmp_path):
    out = tmp_path / "eval.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run(
        [str(OPTIMUM_CLI), "gatenorm", "eval", "-m", str(saved / "pruned"), "-t", str(saved / "text.txt"),
         "--window", "64", "--reference", str(saved / "original"), "--chat", "--format", "json", "-o", str(out)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == json.loads(out.read_text())
    assert data["reference"] == str(saved / "original") and data["kl_mean"] > 0 and 0 < data["top1_agreement"] < 1
    assert len(data["chat"]["pairs"]) == len(CHAT_PROMPTS) and data["chat"]["token_agreement"] < 1
    table = subprocess.run(
        [str(OPTIMUM_CLI), "gatenorm", "eval", "-m", str(saved / "pruned"), "-t", str(saved / "text.txt"),
         "--window", "64", "--reference", str(saved / "original")],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "kl_mean" in table.stdout and "top1" in table.stdout and "Q: " not in table.stdout


def test_evaluate_model_is_perplexity_and_chat_in_one_call(saved):
    """What `eval --reference --chat` runs: the perplexity result's fields with the chat result under `chat`."""
    from optimum_gatenorm.evaluation.suite import evaluate_model

    result = evaluate_model(saved / "pruned", saved / "text.txt", reference=saved / "original", chat=True, window=64)
    alone = evaluate_perplexity(saved / "pruned", saved / "text.txt", reference=saved / "original", window=64)
    data = result.to_dict()
    assert result.retrieval is None and set(data) == {*json.loads(alone.to_json()), "chat"}
    assert (data["perplexity"], data["kl_mean"]) == pytest.approx((alone.perplexity, alone.kl_mean))
    assert data["chat"] == result.chat.to_dict() and len(data["chat"]["pairs"]) == len(CHAT_PROMPTS)
    assert json.loads(result.to_json()) == data
    assert result.to_table() == f"{result.perplexity.to_table()}\n\n{result.chat.to_table()}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "nothing to evaluate"),
        ({"text_path": "t.txt", "chat": True}, "`chat=True` compares answers with a reference model"),
        ({"retrieval": "passkey", "reference": "ref"}, "`reference` is used on a text .* or with `chat=True`"),
        ({"text_path": "t.txt", "dtype": "float64"}, "dtype must be one of auto, float32, float16, bfloat16"),
    ],
)
def test_evaluate_model_refuses_a_request_it_cannot_run_before_any_work(options, message, tmp_path):
    from optimum_gatenorm.evaluation.suite import evaluate_model

    with pytest.raises(InvalidConfigError, match=message):
        evaluate_model(tmp_path / "never-read", **options)


@pytest.mark.real
def test_real_smollm2_answers_paris_and_agrees_with_itself():
    from optimum_gatenorm import load_pruned, resolve_model
    from optimum_gatenorm.checkpoints.modeling import load_tokenizer

    directory = resolve_model("smollm2-135m")
    model, tokenizer = load_pruned(directory, dtype=torch.float32), load_tokenizer(directory)
    assert tokenizer.chat_template
    answers = chat_answers(model, tokenizer, max_new_tokens=24)
    print()
    for answer in answers:
        print(f"{answer.prompt!r} -> {answer.text!r}")
    assert "Paris" in first_sentence(answers[0].text), answers[0].text
    result = chat_fidelity(model, tokenizer, answers, max_new_tokens=24)
    assert (result.first_sentence_agreement, result.token_agreement, result.exact_match) == (1.0, 1.0, 1.0)
