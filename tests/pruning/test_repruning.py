"""Pruning an already pruned checkpoint keeps the truth: the record keeps each removed layer's own criterion and
replacement, and the report and the model card count and list every removed layer, saying which run removed which."""

import json

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer
from huggingface_hub import ModelCard

from optimum_gatenorm import GateNormConfig, GateNormPruner, PrunedAttentionConfig, load_pruned
from optimum_gatenorm.checkpoints.card import model_card
from optimum_gatenorm.checkpoints.modeling import save_pruned
from optimum_gatenorm.checkpoints.record import get_layer_criteria, get_replacements
from optimum_gatenorm.errors import InvalidCheckpointError
from optimum_gatenorm.pipeline import prune_and_save
from optimum_gatenorm.report import REPORT_FILE, PruningReport


LAYERS = 6
IDS = torch.tensor([[5, 17, 33, 2, 9, 41, 7, 12]])
FIRST = GateNormConfig(num_layers=2, criterion="gate_norm", replacement="linear", protect_first=1, min_gap=1)
SECOND = GateNormConfig(num_layers=1, criterion="random", replacement="mean", protect_first=1, min_gap=1, seed=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("repruning") / "model"
    tiny_model("llama", num_hidden_layers=LAYERS).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def twice(model_dir, tmp_path_factory):
    """`prune` run twice, as the CLI runs it: the first output pruned again with another criterion and replacement."""
    root = tmp_path_factory.mktemp("twice")
    first = prune_and_save(model_dir, root / "first", FIRST)
    second = prune_and_save(root / "first", root / "second", SECOND)
    return first, second


def _record(directory) -> dict:
    return json.loads((directory / "config.json").read_text())["quantization_config"]


def test_the_record_keeps_each_layers_own_criterion_and_replacement(twice):
    first, second = twice
    earlier, now = first.report.removed_layers, second.report.removed_layers
    assert len(earlier) == 2 and len(now) == 1 and not set(earlier) & set(now)
    record = _record(second.output_dir)
    assert record["pruned_attention_layers"] == sorted(earlier + now)
    assert record["layer_criteria"] == {
        **{str(layer): "gate_norm" for layer in earlier},
        **{str(layer): "random" for layer in now},
    }
    assert record["attention_replacements"] == {
        **{str(layer): "linear" for layer in earlier},
        **{str(layer): "mean" for layer in now},
    }
    assert record["criterion"] == "random"  # the latest run's, as before: older readers keep reading it
    config = load_pruned(second.output_dir).config
    assert get_layer_criteria(config) == {**dict.fromkeys(earlier, "gate_norm"), **dict.fromkeys(now, "random")}
    assert get_replacements(config) == {**dict.fromkeys(earlier, "linear"), **dict.fromkeys(now, "mean")}


def test_the_report_and_the_card_count_every_removed_layer_and_say_which_run_removed_it(twice):
    first, second = twice
    earlier, now = first.report.removed_layers, second.report.removed_layers
    report = PruningReport.from_json(second.output_dir / REPORT_FILE)
    assert report.removed_layers == now and report.earlier_layers == earlier
    assert report.pruned_layers == sorted(earlier + now)
    assert report.layer_criteria == {**{str(i): "gate_norm" for i in earlier}, **{str(i): "random" for i in now}}
    assert json.loads((second.output_dir / REPORT_FILE).read_text())["earlier_layers"] == earlier
    assert f"2 removed earlier (gate_norm): {earlier}" in report.summary()

    text = ModelCard.load(second.output_dir / "README.md").text
    assert f"# first: 3 of {LAYERS} attention sublayers removed" in text
    a, b = earlier
    assert (
        f"layer {now[0]} by this run" in text
        and f"layers {a} and {b} by an earlier run, which wrote the input" in text
    )
    assert f"- **Removed by this run**: the attention sublayers of layer {now[0]} (1 of {LAYERS})" in text
    assert f"layers {a} and {b} (chosen by `gate_norm`, replacement `linear`)" in text
    assert "`random`" in text and "a constant vector" in text  # this run's criterion and replacement
    # a first pruning reads as before: no earlier run named
    first_card = ModelCard.load(first.output_dir / "README.md").text
    assert f"2 of {LAYERS} attention sublayers removed" in first_card and "earlier run" not in first_card


def test_load_pruned_gives_the_logits_of_the_model_pruned_twice(twice, tmp_path):
    first, _ = twice
    pruner = GateNormPruner.from_pretrained(first.output_dir, dtype=torch.float32)
    model, report = pruner.prune(SECOND)
    assert len(report.pruned_layers) == 3 and report.earlier_layers == first.report.removed_layers
    save_pruned(model, tmp_path / "again")
    with torch.no_grad():
        expected = model(IDS).logits
        assert torch.equal(load_pruned(tmp_path / "again")(IDS).logits, expected)
    assert f"3 of {LAYERS} attention sublayers removed" in model_card(report, source=str(first.output_dir))


def test_a_record_written_before_per_layer_criteria_loads_and_keeps_its_criterion_when_pruned_again(model_dir):
    old = {"quant_method": "gatenorm", "pruned_attention_layers": [1, 3], "num_hidden_layers": 4}
    assert PrunedAttentionConfig.from_dict(old).criteria == {}  # no criterion recorded: none claimed
    assert "layer_criteria" not in PrunedAttentionConfig.from_dict(old).to_dict()
    record = PrunedAttentionConfig.from_dict({**old, "criterion": "cosine_self"})
    assert record.criteria == {1: "cosine_self", 3: "cosine_self"}
    with pytest.raises(InvalidCheckpointError, match=r"layer_criteria names layer '2', which is not one of the"):
        PrunedAttentionConfig.from_dict({**old, "layer_criteria": {"2": "gate_norm"}})
    with pytest.raises(InvalidCheckpointError, match="layer 1 has criterion 7; expected a name"):
        PrunedAttentionConfig.from_dict({**old, "layer_criteria": {"1": 7}})

    # a checkpoint pruned by an older version: its record has `criterion` only
    model = load_pruned(model_dir)
    model, _ = GateNormPruner(model).prune(GateNormConfig(num_layers=2, criterion="gate_norm", replacement="none"))
    earlier = sorted(get_layer_criteria(model))
    model.config.quantization_config = PrunedAttentionConfig(earlier, LAYERS, criterion="cosine_self")
    model, report = GateNormPruner(model).prune(GateNormConfig(num_layers=1, criterion="random", replacement="none"))
    assert get_layer_criteria(model) == {**dict.fromkeys(earlier, "cosine_self"), report.removed_layers[0]: "random"}
