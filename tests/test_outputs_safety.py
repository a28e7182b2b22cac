"""Nothing of the user's is ever lost, and what the user is told holds: what makes an output directory ours, the
Python API's promises (scores are not computed twice; progress shows), `--max-tokens` reading only what it needs,
warnings for meaningless evaluations, help and README agreeing. README's Python block runs in
tests/project/test_docs_blocks.py.

The one-line refusals, a real full disk, real SIGTERM / SIGHUP and stale temporaries of killed runs are in
`tests/commands/test_bad_input_table.py`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from cli_support import ENV, gatenorm, one_line_error
from conftest import HAS_ONNX, ROOT, tiny_model, tiny_tokenizer

from optimum_gatenorm import GateNormConfig, GateNormPruner, prune_and_save
from optimum_gatenorm.errors import OutputExistsError
from optimum_gatenorm.outputs import (
    OUTPUT_MARKER,
    foreign_entries,
    is_our_output,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model")
    tiny_model("llama").save_pretrained(root)
    tiny_tokenizer().save_pretrained(root)
    return root


# --- what is ours -------------------------------------------------------------------------------------------------


def test_the_marker_lists_every_file_and_overwrite_replaces_exactly_those(model_dir, tmp_path):
    out = tmp_path / "pruned"
    prune_and_save(
        model_dir, out, GateNormConfig(num_layers=1, criterion="gate_norm"), export="onnx" if HAS_ONNX else None
    )
    marker = json.loads((out / OUTPUT_MARKER).read_text())
    present = sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.name != OUTPUT_MARKER or p.parent != out
    )
    assert marker["writer"] == "optimum-gatenorm" and sorted(marker["files"]) == present
    assert ("onnx/model.onnx" in marker["files"]) == HAS_ONNX
    assert foreign_entries(out) == [] and is_our_output(out)

    # A file the user adds, even deep inside, makes it theirs: refused, nothing touched.
    note = out / ("onnx" if HAS_ONNX else ".") / "my note.txt"
    note.write_text("mine\n")
    assert foreign_entries(out) == [note.relative_to(out).as_posix()]
    with pytest.raises(OutputExistsError, match="my note.txt"):
        prune_and_save(model_dir, out, GateNormConfig(num_layers=2, criterion="gate_norm"), overwrite=True)
    assert note.read_text() == "mine\n"
    note.unlink()
    prune_and_save(model_dir, out, GateNormConfig(num_layers=2, criterion="gate_norm"), overwrite=True)
    assert len(json.loads((out / "gatenorm_report.json").read_text())["removed_layers"]) == 2


def test_a_legacy_output_is_ours_only_with_a_real_report_and_nothing_foreign(model_dir, tmp_path):
    legacy = tmp_path / "legacy"
    prune_and_save(model_dir, legacy, GateNormConfig(num_layers=1, criterion="gate_norm"))
    (legacy / OUTPUT_MARKER).unlink()  # as versions before the marker wrote it
    assert foreign_entries(legacy) == ["README.md"]  # those versions wrote no model card: this one is not theirs
    (legacy / "README.md").unlink()
    assert foreign_entries(legacy) == []
    for name in ("onnx/notes.txt", "model-a/b-of-c.safetensors"):  # known names, in the wrong place
        (legacy / name).parent.mkdir(exist_ok=True)
        (legacy / name).write_text("mine\n")
    assert foreign_entries(legacy) == ["model-a", "model-a/b-of-c.safetensors", "onnx/notes.txt"]
    shutil.rmtree(legacy / "model-a")
    shutil.rmtree(legacy / "onnx")
    prune_and_save(model_dir, legacy, GateNormConfig(num_layers=1, criterion="gate_norm"), overwrite=True)
    assert (legacy / OUTPUT_MARKER).is_file()

    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "gatenorm_report.json").write_text("{}")  # the name alone proves nothing
    (fake / "config.json").write_text("{}")
    assert foreign_entries(fake) == ["config.json", "gatenorm_report.json"]
    (fake / OUTPUT_MARKER).write_text("not json")
    assert not is_our_output(fake)


# --- the Python API keeps its promises ----------------------------------------------------------------------------


def test_prune_reuses_the_scores_of_score_and_not_after_pruning(model_dir):
    pruner = GateNormPruner.from_pretrained(model_dir)
    report = pruner.score("gate_norm")
    assert pruner.score("gate_norm") is report  # same criterion: not computed again
    assert pruner.score("random", seed=1) is not pruner.score("random", seed=2)
    pruner.score("gate_norm")
    model, pruned = pruner.prune(GateNormConfig(num_layers=1, criterion="gate_norm"))
    assert pruned.scores == report.scores
    again = pruner.score("gate_norm")  # the model changed: scored anew
    assert again is not report and again.pruned_layers == pruned.removed_layers


def test_the_default_criterion_shows_progress_in_python(model_dir, capfd):
    GateNormPruner.from_pretrained(model_dir).score()
    assert "Self-generated calibration" in capfd.readouterr().err
    GateNormPruner.from_pretrained(model_dir).score(progress=False)
    assert "Self-generated calibration" not in capfd.readouterr().err


# --- checked first, and only as much text as needed ---------------------------------------------------------------


@pytest.mark.process
def test_max_tokens_reads_only_the_text_it_needs(model_dir, tmp_path):
    """A 4 MB single line whose tail is binary: the whole file would be refused; with --max-tokens only its start
    is read, and the perplexity equals that of the start alone."""
    from optimum_gatenorm.evaluation.perplexity import evaluate_perplexity
    from optimum_gatenorm.text import read_text_for_tokens

    words = "It is a truth universally acknowledged that a single man must be in want of a wife. " * 50_000
    long = tmp_path / "long.txt"
    long.write_bytes(words.encode() + b"\x00" * 1000)
    head = tmp_path / "head.txt"
    head.write_text(words[:3000])
    piece = read_text_for_tokens(long, tiny_tokenizer(), 1000)
    assert 1000 < len(piece) < 100_000
    capped = evaluate_perplexity(model_dir, long, window=64, max_tokens=1000)
    alone = evaluate_perplexity(model_dir, head, window=64, max_tokens=1000)
    assert capped.text_tokens == alone.text_tokens == 1000
    assert capped.perplexity == alone.perplexity
    result = gatenorm("eval", "-m", model_dir, "-t", long, "--window", "64")  # no cap: the whole file, refused
    one_line_error(result, "binary")


@pytest.mark.process
def test_a_one_token_or_one_window_evaluation_warns(model_dir, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("It is a truth universally acknowledged. " * 10)
    result = gatenorm("eval", "-m", model_dir, "-t", text, "--max-tokens", "2", "--window", "64", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["num_tokens"] == 1 and "not meaningful" in data["warning"]
    assert "warning: perplexity over 1 token(s) is not meaningful" in result.stderr
    result = gatenorm(
        "eval", "-m", model_dir, "-t", text, "--window", "128", "--max-tokens", "128", "--format", "json"
    )
    data = json.loads(result.stdout)
    assert data["num_windows"] == 1 and data["num_tokens"] == 127
    assert "one window" in data["warning"] and "one window" in result.stderr
    result = gatenorm("eval", "-m", model_dir, "-t", text, "--window", "32", "--format", "json")
    assert json.loads(result.stdout)["warning"] is None and "warning" not in result.stderr


# --- help and README / docs say the same thing ---------------------------------------------------------------------------


def _help(*args) -> str:
    result = gatenorm(*args, "--help", env=dict(ENV, COLUMNS="400"))
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


@pytest.mark.process
def test_help_and_readme_state_the_same_choices():
    from optimum_gatenorm.criteria import DEFAULT_CRITERION, available_criteria
    from optimum_gatenorm.speed.throughput import METRICS

    root = ROOT
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    readme = " ".join(" ".join(page.read_text() for page in pages).split())  # README and the manual it links
    # criteria: every registered one is in prune's help and in README, and both name the same default
    prune_help = _help("prune")
    for name in available_criteria():
        assert name in prune_help and f"`{name}`" in readme, name
    assert f"Default: {DEFAULT_CRITERION}" in prune_help and f"**`{DEFAULT_CRITERION}`**" in readme
    # formats: export's choices, all named by the top-level help and README
    export_help = _help("export")
    formats = re.search(r"--format \{([a-z,-]+)\}", export_help)[1].split(",")
    assert formats == ["onnx", "gguf", "nemotron-nas"]
    top = _help()
    export_line = re.search(r"export\s+(export a .*?)(?: convert |$)", top)[1]
    for label in ("ONNX", "GGUF", "Nemotron-NAS"):
        assert label in export_line, export_line
    for name in formats:
        assert f"--format {name}" in readme or name == "onnx", name
    # --no-validate describes our own logits check, as the exporter does
    assert "optimum's" not in export_help.split("--no-validate", 1)[1].split("--overwrite")[0]
    # the BOS rule: Gemma's tokenizer adds one, SmolLM2's adds nothing, in both
    eval_help = _help("eval")
    assert "as Gemma's does; SmolLM2's adds nothing" in eval_help
    assert "Gemma's adds `<bos>`; SmolLM2's adds nothing" in readme
    # what benchmark reports: the help names each measured metric, and no other
    benchmark_help = _help("benchmark")
    stated = {
        "prefill_s": "prefill latency",
        "decode_tokens_per_s": "decode tokens/s",
        "e2e_tokens_per_s": "end-to-end tokens/s",
        "memory_growth_mb": "memory growth",
    }
    assert set(stated) == set(METRICS)
    for phrase in stated.values():
        assert phrase in benchmark_help, phrase
    throughput = " ".join((root / "docs" / "throughput.md").read_text().split())
    assert "peak memory" not in benchmark_help and "peak memory" not in throughput.split("(the `peak_memory_mb`")[0]
