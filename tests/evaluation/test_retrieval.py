"""The long-context retrieval suite (`optimum_gatenorm.evaluation.retrieval`): its generator, scoring and refusals
on a tiny model, the command line, and the unpruned SmolLM2 finding the pass key at 1k tokens."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from cli_support import OPTIMUM_CLI
from conftest import ROOT, tiny_model, tiny_tokenizer

from optimum_gatenorm.errors import InvalidConfigError
from optimum_gatenorm.evaluation.retrieval import (
    FILLER,
    RETRIEVAL_TASKS,
    RetrievalConfig,
    RetrievalResult,
    answer_is_right,
    evaluate_retrieval,
    retrieval_accuracy,
    retrieval_cases,
)


ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama with room for 1,024 positions and the character-level tokenizer (one token per character)."""
    root = tmp_path_factory.mktemp("tiny")
    model = tiny_model("llama", max_position_embeddings=1024)
    model.save_pretrained(root)
    tiny_tokenizer().save_pretrained(root)
    return model, tiny_tokenizer(), root


def test_the_prompts_are_deterministic_fit_their_length_and_hide_the_key(tiny):
    _, tokenizer, _ = tiny
    config = RetrievalConfig(lengths=(600, 900), depths=(0.0, 0.5, 1.0), cases=2, seed=3)
    cases = retrieval_cases(tokenizer, config)
    assert len(cases) == len(RETRIEVAL_TASKS) * 2 * 3 * 2
    again = retrieval_cases(tokenizer, config)
    assert [c.input_ids for c in cases] == [c.input_ids for c in again]
    other = retrieval_cases(tokenizer, RetrievalConfig(lengths=(600, 900), depths=(0.0, 0.5, 1.0), cases=2, seed=4))
    assert [c.key for c in cases] != [c.key for c in other]
    filler = len(FILLER) + 1  # characters, so tokens, of one filler sentence
    for case in cases:
        text = tokenizer.decode(case.input_ids)
        assert case.length - filler < len(case.input_ids) <= case.length, (case.task, case.length, len(case.input_ids))
        assert text.count(case.key) >= 1 and len(case.key) == 5
    # The needle moves through the filler with the depth.
    for length in (600, 900):
        passkeys = [c for c in cases if c.task == "passkey" and c.length == length][::2]
        where = [tokenizer.decode(c.input_ids).index(c.key) for c in passkeys]
        assert where == sorted(where) and where[0] < where[-1], where


def test_chat_template_or_completion_is_recorded(tiny):
    model, _, _ = tiny
    tokenizer = tiny_tokenizer()  # the fixture's stays without a template
    tokenizer.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}<|assistant|>"
    config = RetrievalConfig(tasks=("passkey",), lengths=(400,), depths=(0.5,), cases=1)
    chat = retrieval_cases(tokenizer, config)[0]
    plain = retrieval_cases(tokenizer, RetrievalConfig(**{**config.__dict__, "chat": False}))[0]
    assert tokenizer.decode(chat.input_ids).endswith("<|assistant|>The pass key is")
    assert "<|user|>" not in tokenizer.decode(plain.input_ids)
    assert retrieval_accuracy(model, tokenizer, config).chat_template is True


def test_every_task_length_and_depth_is_counted_and_round_trips(tiny):
    model, tokenizer, _ = tiny
    config = RetrievalConfig(lengths=(400, 500), depths=(0.2, 0.8), cases=2)
    result = retrieval_accuracy(model, tokenizer, config, model_name="tiny")
    assert [(r["task"], r["length"], r["depth"]) for r in result.rows] == [
        (task, length, depth) for task in RETRIEVAL_TASKS for length in (400, 500) for depth in (0.2, 0.8)
    ]
    assert all(r["total"] == 2 for r in result.rows) and len(result.cases) == 24
    assert sum(r["correct"] for r in result.rows) == sum(c["correct"] for c in result.cases)
    assert all(c["correct"] == answer_is_right(c["answer"], c["key"]) for c in result.cases)
    assert result.chat_template is False
    back = RetrievalResult.from_dict(json.loads(result.to_json()))
    assert back.accuracy() == result.accuracy() and back.rows == result.rows
    table = result.to_table()
    assert "multikey" in table and "plain completion" in table and len(table.splitlines()) == 1 + 6 + 1


@pytest.mark.parametrize(
    ("answer", "right"),
    [
        (" 12345.", True),
        ("12345", True),
        (" is 12345 and 54321", True),
        (" 123456", False),
        (" 54321, 12345", False),
        ("", False),
        (" twelve", False),
    ],
)
def test_the_answer_is_the_first_five_digit_number(answer, right):
    assert answer_is_right(answer, "12345") is right


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"depths": (0.5, 1.5)}, "depths must be numbers in [0, 1]"),
        ({"depths": (-0.1,)}, "depths"),
        ({"tasks": ("passkey", "haystack")}, "'haystack'"),
        ({"lengths": ()}, "lengths"),
        ({"lengths": (0,)}, "lengths"),
        ({"cases": 0}, "cases"),
    ],
)
def test_bad_settings_are_refused(kwargs, needle):
    with pytest.raises(InvalidConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        RetrievalConfig(**kwargs)


def test_a_length_beyond_the_context_or_below_the_question_is_refused(tiny):
    model, tokenizer, root = tiny
    with pytest.raises(InvalidConfigError, match=r"lengths \[2048\] exceed the model's context of 1024"):
        retrieval_accuracy(model, tokenizer, RetrievalConfig(lengths=(512, 2048)))
    with pytest.raises(InvalidConfigError, match=r"lengths \[2048\] exceed"):
        evaluate_retrieval(root, RetrievalConfig(lengths=(2048,)))  # from config.json, before the model loads
    with pytest.raises(InvalidConfigError, match="without any filler"):
        retrieval_cases(tokenizer, RetrievalConfig(lengths=(50,)))


def _document(args: list) -> tuple[subprocess.CompletedProcess, dict]:
    """Runs `optimum-cli gatenorm ARGS -o -`: the process (it must succeed) and the JSON document on stdout."""
    result = subprocess.run(
        [str(OPTIMUM_CLI), "gatenorm", *map(str, args), "-o", "-"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result, json.loads(result.stdout)


@pytest.mark.process
def test_the_command_line_writes_the_document(tiny):
    _, _, root = tiny
    args = ["eval", "-m", root, "--task", "passkey,vartrack", "--lengths", "400", "--depths", "0,1", "--cases", "1"]
    result, data = _document(args)
    assert [(r["task"], r["depth"]) for r in data["rows"]] == [
        ("passkey", 0.0),
        ("passkey", 1.0),
        ("vartrack", 0.0),
        ("vartrack", 1.0),
    ]
    assert "retrieval accuracy" in result.stderr


@pytest.mark.process
def test_compare_on_the_command_line_records_retrieval_at_every_point(tiny, tmp_path):
    _, _, root = tiny
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    args = ["compare", "-m", root, "-t", text, "--criteria", "last", "-k", "0,1", "--window", "64"]
    args += ["--task", "passkey", "--lengths", "300", "--depths", "0.5", "--cases", "1", "--task-seed", "2"]
    result, data = _document(args)
    assert [sorted(point["retrieval"]) for point in data["points"]] == [["passkey@300"]] * 2
    assert data["settings"]["retrieval"]["seed"] == 2 and sorted(data["retrieval"]) == ["", "3"]
    assert "long-context retrieval" in result.stderr


@pytest.mark.real
def test_the_unpruned_smollm2_finds_the_pass_key_at_1k_tokens():
    result = evaluate_retrieval(
        "smollm2-135m", RetrievalConfig(tasks=("passkey",), lengths=(1024,), depths=(0.1, 0.5, 0.9), cases=1)
    )
    assert result.chat_template is True
    assert result.accuracy("passkey") == 1.0, result.to_table()


BENCH = ROOT / "benchmarks" / "long_context"


def _first_fall(points: list[dict]) -> tuple[int | None, tuple[int, ...]]:
    """The first k whose retrieval is more than one case below the unpruned model's in some task@length cell."""
    base = next(p["retrieval"] for p in points if p["num_layers"] == 0)
    ks = tuple(sorted(p["num_layers"] for p in points if p["num_layers"]))
    for k in ks:
        cells = next(p["retrieval"] for p in points if p["num_layers"] == k)
        if any(base[cell][0] - cells[cell][0] > 1 for cell in base):
            return k, ks
    return None, ks


@pytest.mark.parametrize("measured_on", ["smollm2-135m", "gemma3-270m"])
def test_the_retrieval_warning_follows_the_long_context_records(measured_on):
    from optimum_gatenorm.criteria.measurements import MEASUREMENTS, retrieval_warning

    record = json.loads((BENCH / f"{measured_on}-linear.json").read_text())
    assert record["criteria"].keys() == {"cosine_self"} and record["settings"]["replacement"] == "linear"
    measurement = MEASUREMENTS[measured_on]
    assert (measurement.retrieval_falls_at, measurement.retrieval_ks) == _first_fall(record["points"])
    layers, falls = measurement.layers, measurement.retrieval_falls_at
    if falls is None:
        assert retrieval_warning("cosine_self", max(measurement.retrieval_ks), layers, measured_on) is None
        return
    held = max(k for k in measurement.retrieval_ks if k < falls)  # the last measured k at which it held
    assert retrieval_warning("cosine_self", held, layers, measured_on) is None
    warning = retrieval_warning("cosine_self", held + 1, layers, measured_on)  # between the measured points: warned
    assert f"up to k={held} of {layers} on {measurement.model} and fell at k={falls}" in warning
    assert "--task passkey" in warning
    assert retrieval_warning("cosine_self", 2 * held, 2 * layers, measured_on) is None  # scaled by depth
    assert retrieval_warning("cosine_self", 2 * held + 1, 2 * layers, measured_on) is not None
    assert retrieval_warning("gate_norm", falls, layers, measured_on) is None  # measured on the default only
    assert retrieval_warning("cosine_self", falls, layers, None) is None
