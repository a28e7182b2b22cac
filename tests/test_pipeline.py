"""`score_model` and `score_summary`: what `optimum-cli gatenorm score` runs and prints (`prune_and_save` is tested
in tests/pruning/test_pruning.py)."""

import pytest
from conftest import tiny_model

from optimum_gatenorm import GateNormPruner, InvalidConfigError
from optimum_gatenorm.pipeline import score_model, score_summary


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pipeline") / "llama"
    tiny_model("llama").save_pretrained(directory)
    return directory


def test_score_model_is_the_pruners_score(llama_dir):
    report = score_model(llama_dir, "gate_norm", device="cpu")
    assert report.scores == GateNormPruner.from_pretrained(llama_dir).score("gate_norm").scores


@pytest.mark.parametrize(
    ("criterion", "message"),
    [("made_up", "unknown criterion 'made_up'"), ("cosine", "needs calibration text: pass `calibration_text=...`")],
)
def test_score_model_refuses_before_scoring(llama_dir, criterion, message):
    with pytest.raises(InvalidConfigError, match=message):
        score_model(llama_dir, criterion, device="cpu")


def test_score_summary_names_the_gap_prune_keeps(llama_dir):
    plain = score_summary(score_model(llama_dir, "gate_norm", device="cpu")).splitlines()
    assert plain[0].startswith("gate_norm scores of llama (4 layers), computed in ")
    assert plain[0].endswith(" s; lowest first:") and len(plain) == 3 + 4  # the line, the table head, a row per layer
    gap = score_summary(score_model(llama_dir, "gate_trace", device="cpu")).splitlines()
    assert len(gap) == len(plain) + 1
    assert gap[-1] == (
        "prune walks this ranking with min_gap=2: a layer closer than 2 to one already chosen is skipped "
        "(`min_gap=1` for plain k lowest)"
    )
