"""Which layers a criterion's scores remove (`pruning.pruner.select_layers`): the min_gap rule, its default per
criterion, and the spacing warning in the report."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from optimum_gatenorm import GateNormConfig, GateNormPruner
from optimum_gatenorm.errors import InvalidConfigError
from optimum_gatenorm.pruning.pruner import select_layers, spacing_warning


def test_min_gap_skips_neighbours_and_counts_earlier_removals():
    scores = [9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert select_layers(scores, GateNormConfig(num_layers=3, protect_first=0, min_gap=1))[0] == [1, 2, 3]
    assert select_layers(scores, GateNormConfig(num_layers=3, protect_first=0, min_gap=2))[0] == [1, 3, 5]
    assert select_layers(scores, GateNormConfig(num_layers=2, protect_first=0, min_gap=3))[0] == [1, 4]
    already = [9.0, None, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]  # layer 1 was pruned before: 2 is its neighbour
    assert select_layers(already, GateNormConfig(num_layers=2, protect_first=0, min_gap=2))[0] == [3, 5]
    # 5 of 8 cannot all be 2 apart once 1, 3, 5, 7 are taken: the fifth is the lowest remaining, with a warning
    removed = select_layers(scores, GateNormConfig(num_layers=5, protect_first=0, min_gap=2))[0]
    assert removed == [1, 2, 3, 5, 7]
    assert spacing_warning(removed, scores, 2).startswith("not every removed sublayer could be kept min_gap=2")
    assert "1-2, 2-3" in spacing_warning(removed, scores, 2)
    assert spacing_warning([1, 3, 5], scores, 2) is None
    assert "1-2" in spacing_warning([2], already, 2)  # next to a sublayer removed earlier
    with pytest.raises(InvalidConfigError, match="min_gap must be an integer >= 1 .*got 0"):
        GateNormConfig(num_layers=1, min_gap=0)


def test_min_gap_defaults_to_the_criterion_rule():
    assert GateNormConfig(num_layers=1, criterion="gate_trace").resolved_min_gap == 2
    assert GateNormConfig(num_layers=1).resolved_min_gap == 1  # the default, cosine_self
    assert GateNormConfig(num_layers=1, criterion="gate_norm").resolved_min_gap == 1
    assert GateNormConfig(num_layers=1, criterion="gate_norm", min_gap=3).resolved_min_gap == 3
    assert GateNormConfig(num_layers=1, criterion="gate_norm").to_dict()["min_gap"] == 1
    scores = [9.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert select_layers(scores, GateNormConfig(num_layers=2, criterion="gate_trace"))[0] == [1, 3]
    assert select_layers(scores, GateNormConfig(num_layers=2))[0] == [1, 2]
    assert select_layers(scores, GateNormConfig(num_layers=2, criterion="gate_norm"))[0] == [1, 2]


def test_pruning_report_carries_the_spacing_warning():
    model = tiny_model("llama")
    with torch.no_grad():  # make layer 2 the lowest gate_trace: its neighbours 1 and 3 are then the only others
        k = model.model.layers[2].self_attn.k_proj.weight
        model.model.layers[2].self_attn.q_proj.weight.copy_(k.reshape(2, 1, 8, 32).expand(2, 2, 8, 32).reshape(32, 32))
    _, report = GateNormPruner(model).prune(GateNormConfig(num_layers=2, criterion="gate_trace", replacement="none"))
    assert 2 in report.removed_layers and len(report.removed_layers) == 2
    assert any(w.startswith("not every removed sublayer could be kept min_gap=2") for w in report.warnings)
