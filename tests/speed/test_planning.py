"""Speed-up planning: measured attention shares, predictions, `plan_num_layers` and `resolve_target`.

No speed is asserted (the machine is shared and noisy): only structure, the formulas and the planning logic.
"""

import math

import pytest
from conftest import tiny_config, tiny_model, tiny_tokenizer
from model_support import replaced_model

from optimum_gatenorm import InvalidConfigError, ModelCost, ModelNotFoundError, ideal_speedup, prune_model
from optimum_gatenorm.speed.measuring import measure_attention_shares
from optimum_gatenorm.speed.planning import (
    AttentionShares,
    ShareCell,
    plan_num_layers,
    predict_speedup,
    resolve_target,
)


def _shares(config, prefill=(0.5, 0.6), decode=(0.4, 0.5), contexts=(128, 1024)) -> AttentionShares:
    """Synthetic shares of the tiny model: exact numbers for the formulas."""
    cells = []
    for phase, values in (("prefill", prefill), ("decode", decode)):
        for context, share in zip(contexts, values, strict=True):
            t0 = 1.0
            t_attn = share * t0 / 4
            cells.append(
                ShareCell(phase, 1, context, t0, t0 - 3 * t_attn, t_attn, t_attn, share, [t0, t0], [0.5, 0.5])
            )
    return AttentionShares(
        model="tiny",
        model_type=config.model_type,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_layers=config.num_hidden_layers,
        backend="onnxruntime",
        provider="cpu",
        new_tokens=4,
        warmup=1,
        runs=2,
        cells=cells,
    )


@pytest.fixture
def config():
    return tiny_config("llama")  # 4 layers


@pytest.mark.parametrize("backend", [pytest.param("onnxruntime", marks=pytest.mark.onnx), "pytorch"])
def test_measure_attention_shares_on_a_tiny_model(tmp_path, backend):
    model_dir = tmp_path / "model"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    shares = measure_attention_shares(
        model_dir, contexts=[8, 32], new_tokens=4, warmup=1, runs=3, backend=backend, work_dir=tmp_path / "work"
    )
    assert shares.num_attention_layers == 4 and shares.max_k == 3 and shares.backend == backend
    assert {(c.phase, c.batch, c.context) for c in shares.cells} == {
        (p, 1, c) for p in ("prefill", "decode") for c in (8, 32)
    }
    for cell in shares.cells:
        assert cell.T0_s > 0 and cell.T_ablated_s > 0
        assert cell.t_attn_raw_s == pytest.approx((cell.T0_s - cell.T_ablated_s) / 3)
        assert cell.share == pytest.approx(4 * max(cell.t_attn_raw_s, 0) / cell.T0_s)
        # the formula's range, below n / (n - 1) as T_ablated > 0; no speed is asserted: on a
        # loaded machine a tiny model's medians can come out either way
        assert 0 <= cell.share < 4 / 3
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["k0", "k3"]
    again = AttentionShares.from_json(shares.save(tmp_path / "shares.json"))
    assert again == shares


def test_json_round_trip(config, tmp_path):
    shares = _shares(config)
    path = shares.save(tmp_path / "s.json")
    assert AttentionShares.from_json(path) == shares
    assert AttentionShares.from_dict({**shares.to_dict(), "newer_field": 1}) == shares


def test_bad_shares_are_refused(config):
    data = _shares(config).to_dict()
    with pytest.raises(InvalidConfigError, match="phase 'decode'"):
        AttentionShares.from_dict({**data, "cells": [c for c in data["cells"] if c["phase"] == "prefill"]})
    with pytest.raises(InvalidConfigError, match="backend"):
        AttentionShares.from_dict({**data, "backend": "tensorrt"})


@pytest.mark.parametrize("phase", ["prefill", "decode", "both"])
@pytest.mark.parametrize("measured", [True, False])
def test_predictions_start_at_one_and_are_monotone(config, phase, measured):
    shares = _shares(config) if measured else None
    for context in (16, 128, 500, 1024, 4096):
        values = [predict_speedup(k, shares, config, phase, 1, context) for k in range(4)]
        assert values[0] == 1.0
        assert all(b >= a for a, b in zip(values, values[1:], strict=False)) and values[-1] > 1


def test_measured_prediction_is_the_share_formula(config):
    shares = _shares(config)
    for k in range(4):
        assert predict_speedup(k, shares, config, "prefill", 1, 128) == pytest.approx(1 / (1 - k * 0.5 / 4))
        assert predict_speedup(k, shares, config, "decode", 1, 1024) == pytest.approx(1 / (1 - k * 0.5 / 4))
    # between measured contexts: linear in log(context); outside: the nearest; another batch: the nearest batch
    middle = round(math.sqrt(128 * 1024))
    share, source = shares.share("prefill", 1, middle)
    assert share == pytest.approx(0.55, abs=1e-3) and "interpolated" in source
    assert shares.share("prefill", 1, 8192)[0] == 0.6 and "nearest" in shares.share("prefill", 1, 8192)[1]
    assert shares.share("decode", 8, 128)[0] == 0.4 and "batch 8" in shares.share("decode", 8, 128)[1]
    assert predict_speedup(2, shares, config, "both", 1, 128) == pytest.approx(1 / (1 - 2 * 0.4 / 4))


def test_analytical_prediction_without_shares(config):
    baseline = ModelCost.from_config(config)
    for k, phase, bound in ((2, "prefill", "compute_bound"), (3, "decode", "memory_bound")):
        pruned = ModelCost.from_config(config, pruned_layers=list(range(4 - k, 4)))
        expected = ideal_speedup(baseline, pruned, phase, 2, 64)[bound]
        assert predict_speedup(k, None, config, phase, 2, 64) == pytest.approx(expected)
    # the measured shares, when given, change the answer
    assert predict_speedup(2, _shares(config), config, "prefill", 1, 128) != predict_speedup(
        2, None, config, "prefill", 1, 128
    )


def test_an_already_pruned_model_counts_its_remaining_sublayers():
    model = tiny_model("llama")
    prune_model(model, [1])
    assert predict_speedup(2, None, model.config, "prefill", 1, 64) > 1
    with pytest.raises(InvalidConfigError, match="at most 2"):
        predict_speedup(3, None, model.config, "prefill", 1, 64)
    with pytest.raises(InvalidConfigError, match="num_attention_layers"):
        predict_speedup(1, _shares(tiny_config("llama")), model.config, "prefill", 1, 128)


@pytest.mark.parametrize("measured", [True, False])
@pytest.mark.parametrize("phase", ["prefill", "decode", "both"])
def test_plan_returns_the_smallest_k(config, measured, phase):
    shares = _shares(config) if measured else None
    best = predict_speedup(3, shares, config, phase, 1, 1024)
    for target in (1.0001, (1 + best) / 2, best):
        k = plan_num_layers(target, config, phase=phase, context=1024, shares=shares)
        assert predict_speedup(k, shares, config, phase, 1, 1024) >= target
        assert predict_speedup(k - 1, shares, config, phase, 1, 1024) < target


@pytest.mark.parametrize("measured", [True, False])
def test_unreachable_targets_are_refused_in_one_line(config, measured):
    shares = _shares(config) if measured else None
    best = predict_speedup(3, shares, config, "both", 1, 1024)
    with pytest.raises(InvalidConfigError) as info:
        plan_num_layers(100, config, context=1024, shares=shares)
    message = str(info.value)
    assert "\n" not in message and "100x" in message
    assert f"the best is {math.floor(best * 1000) / 1000:.3f}x at k=3 of 4" in message
    with pytest.raises(InvalidConfigError, match="at k=1 of 4"):
        plan_num_layers(1.5, config, phase="prefill", shares=shares, max_k=1)


@pytest.mark.parametrize("target", [1.0, 0.5, -2, float("nan"), "1.2", True])
def test_bad_targets(config, target):
    with pytest.raises(InvalidConfigError, match="target speed-up must be a number > 1"):
        plan_num_layers(target, config)


def test_resolve_target_reads_a_shares_file_and_warns(config, tmp_path):
    path = _shares(config).save(tmp_path / "shares.json")
    k, predicted = resolve_target(config, 1.2, phase="prefill", context=1024, shares_file=path, protect_first=0)
    assert k == 2 == predicted["num_layers"]  # 1 / (1 - k 0.6 / 4): 1.176 at k = 1, 1.429 at k = 2
    assert predicted["prefill"] == pytest.approx(1 / (1 - 2 * 0.6 / 4))
    assert "measured on onnxruntime cpu" in predicted["source"] and "\n" not in predicted["summary"]
    assert predicted["warning"] and "beyond what was measured" in predicted["warning"]  # 2 of 4 is past 12 of 30
    # protected and excluded layers lower the reachable k: here only layer 3 may go
    with pytest.raises(InvalidConfigError, match="at k=1 of 4"):
        resolve_target(config, 1.5, phase="prefill", shares_file=path, protect_first=2, exclude_layers=[2])
    k, predicted = resolve_target(config, 1.05)  # analytical, default phase both, context 1024
    assert (
        predicted["source"].startswith("analytical")
        and k >= 1
        and min(predicted["prefill"], predicted["decode"]) >= 1.05
    )
    with pytest.raises(FileNotFoundError):
        resolve_target(config, 1.2, shares_file=tmp_path / "missing.json")
    for text in ("not json", '{"model": "tiny"}', '{"cells": []}'):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(InvalidConfigError, match="is not an attention-shares file"):
            resolve_target(config, 1.2, shares_file=tmp_path / "bad.json")
    with pytest.raises(InvalidConfigError, match="phase"):
        resolve_target(config, 1.2, phase="train")


def test_benchmark_reports_the_measured_share_bound(tmp_path):
    from optimum_gatenorm.speed.throughput import BenchmarkSettings, run_benchmark

    base, pruned = tmp_path / "base", tmp_path / "pruned"
    tiny_model("llama", max_position_embeddings=256).save_pretrained(base)  # room for 128 + 3 tokens
    model = tiny_model("llama", max_position_embeddings=256)
    prune_model(model, [1, 2])
    model.save_pretrained(pruned)
    shares = _shares(tiny_config("llama"))
    settings = BenchmarkSettings(prompt_lengths=[128], new_tokens=3, warmup=0, runs=2, backend="pytorch")
    result = run_benchmark(pruned, base, settings, shares=shares)
    (row,) = result.summary
    assert row["measured_bound"]["prefill_s"] == pytest.approx(shares.speedup(2, "prefill", 1, 128))
    assert row["measured_bound"]["decode_tokens_per_s"] == pytest.approx(shares.speedup(2, "decode", 1, 129))
    assert "measured-share bound, batch 1, prompt 128" in result.format_table()
    without = run_benchmark(pruned, base, settings)
    assert "measured_bound" not in without.summary[0]
    # or the file `save` wrote (what `benchmark --shares FILE` passes), read and checked before any run
    (from_file,) = run_benchmark(pruned, base, settings, shares=shares.save(tmp_path / "shares.json")).summary
    assert from_file["measured_bound"] == row["measured_bound"]
    with pytest.raises(ModelNotFoundError, match="shares file .* not found"):
        run_benchmark(pruned, base, settings, shares=tmp_path / "missing.json")


# --- replacements are not free -----------------------------------------------------------------------------------


@pytest.mark.parametrize("measured", [True, False])
def test_a_linear_replacement_lowers_the_prediction_and_a_plan_needs_more_layers(config, measured):
    from optimum_gatenorm.speed.planning import replacement_cost_share

    shares = _shares(config) if measured else None
    for phase in ("prefill", "decode"):
        none = predict_speedup(2, shares, config, phase, 1, 1024)
        linear = predict_speedup(2, shares, config, phase, 1, 1024, replacement="linear")
        mean = predict_speedup(2, shares, config, phase, 1, 1024, replacement="mean")
        assert 1 < linear < mean <= none
        share = replacement_cost_share(config, "linear", phase, 1, 1024)
        assert 0 < share < 1
        if measured:  # the measured removal time, less the replacement's share of it
            assert linear == pytest.approx(1 / (1 - 2 * shares.share(phase, 1, 1024)[0] * (1 - share) / 4))
    # the same target asks for more sublayers when each costs a linear map
    target = predict_speedup(2, shares, config, "both", 1, 1024)
    assert plan_num_layers(target, config, context=1024, shares=shares) == 2
    assert plan_num_layers(target, config, context=1024, shares=shares, replacement="linear") == 3
    k, predicted = resolve_target(
        config, target, context=1024, shares_file=shares, protect_first=0, replacement="linear"
    )
    assert k == 3 and predicted["replacement"] == "linear" and "linear replacements" in predicted["source"]
    with pytest.raises(InvalidConfigError, match="replacement must be one of"):
        predict_speedup(1, shares, config, "prefill", 1, 128, replacement="cubic")


def test_benchmark_bound_counts_the_candidates_replacements(tmp_path):

    from optimum_gatenorm.speed.cost_model import replacement_share
    from optimum_gatenorm.speed.throughput import BenchmarkSettings, run_benchmark

    base, replaced = tmp_path / "base", tmp_path / "replaced"
    tiny_model("llama", max_position_embeddings=256).save_pretrained(base)  # room for 128 + 3 tokens
    model = replaced_model("llama", "linear", layers=[1, 2])
    model.config.max_position_embeddings = 256  # rotary positions: the weights do not depend on it
    model.save_pretrained(replaced)
    shares = _shares(tiny_config("llama"))
    settings = BenchmarkSettings(prompt_lengths=[128], new_tokens=3, warmup=0, runs=1, backend="pytorch")
    (row,) = run_benchmark(replaced, base, settings, shares=shares).summary
    costs = [ModelCost.from_config(tiny_config("llama"))]
    costs.append(ModelCost.from_config(tiny_config("llama"), [1, 2], replacements={1: "linear", 2: "linear"}))
    kept = replacement_share(*costs, "prefill", 1, 128)
    assert 0 < kept < 1
    assert row["measured_bound"]["prefill_s"] == pytest.approx(shares.speedup(2, "prefill", 1, 128, kept))
    assert row["measured_bound"]["prefill_s"] < shares.speedup(2, "prefill", 1, 128)
    assert (
        row["ideal"]["prefill_s"]
        < ideal_speedup(costs[0], replace_nothing(costs[1]), "prefill", 1, 128)["compute_bound"]
    )


def replace_nothing(cost: ModelCost) -> ModelCost:
    from dataclasses import replace

    return replace(cost, replacements=())


def test_prune_and_save_plans_a_target_speedup(tmp_path, caplog):
    import logging

    from optimum_gatenorm import GateNormConfig
    from optimum_gatenorm.pipeline import prune_and_save
    from optimum_gatenorm.speed.planning import SpeedupTarget

    model_dir = tmp_path / "model"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    config = GateNormConfig(criterion="gate_norm", protect_first=0, replacement="none")
    expected, predicted = resolve_target(
        tiny_config("llama"), 1.05, context=64, criterion="gate_norm", protect_first=0
    )
    with caplog.at_level(logging.INFO, logger="optimum_gatenorm"):
        result = prune_and_save(model_dir, tmp_path / "out", config, target_speedup=SpeedupTarget(1.05, context=64))
    assert len(result.report.removed_layers) == expected == result.planned["num_layers"]
    assert predicted["summary"] in caplog.text
    # a bare number uses the defaults (both phases, batch 1, context 1024)
    result = prune_and_save(model_dir, tmp_path / "out2", config, target_speedup=1.05)
    assert result.planned["context"] == 1024 and result.planned["phase"] == "both"
    with pytest.raises(InvalidConfigError, match="not both"):
        prune_and_save(model_dir, tmp_path / "out3", GateNormConfig(num_layers=1), target_speedup=1.05)
    with pytest.raises(InvalidConfigError, match="give num_layers or ratio"):
        prune_and_save(model_dir, tmp_path / "out3", config)
    with pytest.raises(InvalidConfigError, match="phase"):
        SpeedupTarget(1.1, phase="train")
    assert not (tmp_path / "out3").exists()


def test_the_plan_counts_sliding_window_layers_first_past_the_window():
    """Gemma-3's pattern: past the window, removing sliding layers saves least, so a plan holds for whichever k the
    criterion picks by counting them first, says so, and needs more layers than at a context within the window."""
    from optimum_gatenorm.speed.cost_model import ModelCost, ideal_speedup
    from optimum_gatenorm.speed.planning import plan_num_layers, predict_speedup, resolve_target

    kinds = (["sliding_attention"] * 2 + ["full_attention"]) * 2
    config = tiny_config("gemma3_text", num_hidden_layers=6, sliding_window=16, layer_types=kinds)
    # k = 2 at a long context: the two cheapest are sliding layers (0 and 1), not the global 2 and 5.
    sliding_pair = ModelCost.from_config(config, pruned_layers=[0, 1])
    global_pair = ModelCost.from_config(config, pruned_layers=[2, 5])
    base = ModelCost.from_config(config)
    got = predict_speedup(2, None, config, "decode", 1, 4096)
    assert got == pytest.approx(ideal_speedup(base, sliding_pair, "decode", 1, 4096)["memory_bound"])
    assert got < ideal_speedup(base, global_pair, "decode", 1, 4096)["memory_bound"]
    target = predict_speedup(3, None, config, "decode", 1, 4096)
    assert plan_num_layers(target, config, phase="decode", context=4096) == 3
    _, predicted = resolve_target(config, target, phase="decode", context=4096)
    assert "sliding-window layers (window 16) counted first" in predicted["source"]
    _, short = resolve_target(config, 1.05, phase="decode", context=16)
    assert "sliding-window" not in short["source"]


def test_planning_is_arithmetic_and_measuring_is_apart():
    """`speed.planning` (what `prune --target-speedup` needs) builds, prunes, exports and times nothing: it imports
    none of the modules that do; the timed ablation lives in `speed.measuring`."""
    import ast
    from pathlib import Path

    from optimum_gatenorm.speed import measuring, planning

    tree = ast.parse(Path(planning.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    doers = {
        "throughput",
        "measuring",
        "exporters.onnx",
        "pruning.pruner",
        "checkpoints.modeling",
        "checkpoints.models",
    }
    assert imported and not imported & doers, imported & doers
    assert {"measure_attention_shares", "prepare_variant"} <= set(measuring.__all__)
    assert not {"measure_attention_shares", "prepare_variant"} & set(planning.__all__)
