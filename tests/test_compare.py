"""`compare`: masking equals pruning, Spearman, and the sweep end to end."""

import copy
import math

import pytest
import torch
from conftest import ALL_TINY, tiny_model

from optimum_gatenorm import prune_model
from optimum_gatenorm.evaluation.compare import mask_attention, spearman


IDS = torch.tensor([[3, 9, 27, 81, 115, 12, 40], [7, 21, 63, 101, 45, 8, 99]])


@pytest.mark.parametrize("name", sorted(ALL_TINY))
def test_masking_equals_structural_pruning(name):
    model = tiny_model(name)
    pruned = copy.deepcopy(model)
    prune_model(pruned, [0, 2])
    with torch.no_grad():
        before = model(IDS, use_cache=False).logits
        with mask_attention(model, [0, 2]):
            masked = model(IDS, use_cache=False).logits
        after = model(IDS, use_cache=False).logits
        expected = pruned(IDS, use_cache=False).logits
    torch.testing.assert_close(masked, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(before, after)  # hooks are gone afterwards
    assert not torch.allclose(masked, before, atol=1e-3)


def test_spearman_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share their average rank: ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        spearman([1], [1])
