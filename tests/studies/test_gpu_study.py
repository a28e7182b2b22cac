"""`benchmarks/gpu_study.py` through a subprocess: the GPU speed study's code path on tiny CPU models.

The GPU machine runs the script once, so everything except the speed itself is checked here: the JSON it writes,
the pruned structures (k fewer attention modules, a KV cache of L - k layers, shared weights), the measured bound's
arithmetic, the skip paths (memory, cost, time budget) and the real shapes on the meta device. No assertion on
speed: CI machines are noisy.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


SCRIPT = ROOT / "benchmarks" / "gpu_study.py"


def run_study(out: Path, *args: str, timeout: int = 120) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--output-dir", str(out), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads((out / "gpu_study.json").read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("gpu_study")
    return run_study(out, "--tiny", "--device", "cpu"), out


@pytest.mark.process
def test_schema(tiny):
    study, _ = tiny
    assert study["schema"] == "optimum_gatenorm.gpu_study/1"
    assert study["status"] == "complete"
    for key in ("date_utc", "torch", "transformers", "python", "optional_modules", "device"):
        assert key in study["machine"], key
    assert study["settings"]["tiny"] and study["settings"]["decode_steps"] == 4
    assert study["pruning_import"]["mode"] == "package"
    assert study["pruning_import"]["module_file"].endswith(
        os.path.join("optimum_gatenorm", "checkpoints", "structure.py")
    )
    assert study["paper_claim"]["max_speedup"] == 1.30 and "LLaMA-13B" in study["paper_claim"]["text"]
    assert "layer" in study["layer_choice"] and study["bound_definition"]
    assert [m["name"] for m in study["models"]] == ["tiny-mha", "tiny-gqa"]
    assert all(m["status"] == "built" and m["param_count"] == m["param_count_expected"] for m in study["models"])


@pytest.mark.process
def test_every_cell_has_positive_timings(tiny):
    study, _ = tiny
    measured = [c for c in study["cells"] if c["status"] == "ok"]
    skipped = [c for c in study["cells"] if c["status"] == "skipped"]
    assert len(measured) == 6 and len(skipped) == 2
    assert all(c["batch"] * c["context"] > 128 and c["reason"].startswith("cost:") for c in skipped)
    runs = study["settings"]["runs"]
    for cell in measured:
        assert cell["rounds_done"] == runs and cell["decode_mode"].startswith("eager")
        for timing in cell["variants"]:
            assert len(timing["prefill_s"]) == len(timing["decode_s_per_token"]) == runs
            assert all(t > 0 for t in timing["prefill_s"] + timing["decode_s_per_token"]), timing


@pytest.mark.process
def test_pruned_structure_and_kv_cache(tiny):
    study, _ = tiny
    for model in study["models"]:
        layers = model["spec"]["num_layers"]
        labels = [v["label"] for v in model["variants"]]
        ks = [v["k"] for v in model["variants"]]
        assert labels[:2] == ["base", "k0-clone"] and ks[:2] == [0, 0]
        assert ks[-1] == layers - 1 and ks == sorted(ks) and len(set(ks[1:])) == len(ks) - 1
        for variant in model["variants"]:
            assert variant["structure_ok"], variant
            assert variant["attention_modules"] == variant["input_norms"] == layers - variant["k"]
            assert variant["shares_base_weights"] and variant["layer_idx_ok"]
            removed = variant["removed_layers"]
            assert len(removed) == variant["k"] and all(1 <= i < layers for i in removed)
        for cell in (c for c in study["cells"] if c["model"] == model["name"] and c["status"] == "ok"):
            for timing in cell["variants"]:
                assert timing["cache_layers"] == timing["cache_layers_filled"] == layers - timing["k"], timing
                assert timing["cache_seq_len"] == cell["context"] + cell["decode_steps"]


@pytest.mark.process
def test_summary_and_bound(tiny):
    study, _ = tiny
    measured = [c for c in study["cells"] if c["status"] == "ok"]
    rows = study["summary"]
    per_model = {m["name"]: len(m["variants"]) - 1 for m in study["models"]}
    assert len(rows) == sum(per_model[c["model"]] for c in measured)
    assert len(study["bounds"]) == len(measured)
    for bound in study["bounds"]:
        for phase in ("prefill", "decode"):
            assert bound[phase]["t_attn_s"] >= 0 and bound[phase]["T0_s"] > 0
    for row in rows:
        for phase in ("prefill", "decode"):
            speedup, ideal = row[f"{phase}_speedup"], row[f"{phase}_bound"]
            assert speedup > 0 and ideal >= 1
            assert math.isclose(row[f"{phase}_efficiency"], speedup / ideal, rel_tol=1e-3)
            low, high = row[f"{phase}_speedup_range"]
            assert 0 < low <= high
            if row["label"] == "k0-clone":
                assert ideal == 1.0  # same structure as the baseline: nothing can be gained
            if row["bound_probe"]:
                assert math.isclose(speedup, ideal, rel_tol=1e-3)  # the probe defines the bound


@pytest.mark.process
def test_report_files(tiny):
    study, out = tiny
    markdown = (out / "gpu_study.md").read_text()
    assert "| model | batch | context | k | prefill speed-up | bound | eff. |" in markdown
    assert "tiny-mha" in markdown and "tiny-gqa" in markdown and "1.30x" in markdown
    assert "(probe)" in markdown and "(A/A)" in markdown
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "gpu_study.png").stat().st_size > 0
    assert len(list(out.iterdir())) <= 8


@pytest.mark.process
def test_time_budget_skips_instead_of_running(tmp_path):
    study = run_study(tmp_path, "--tiny", "--device", "cpu", "--budget-s", "0")
    assert study["status"].startswith("complete (time budget")
    assert all(m["status"] == "skipped" for m in study["models"])
    assert all(c["status"] == "skipped" and c["reason"] for c in study["cells"])
    assert study["summary"] == [] and (tmp_path / "gpu_study.md").is_file()


@pytest.mark.process
def test_real_shapes_plan_on_meta_with_file_import(tmp_path):
    """LLaMA-2-13B and Llama-3-8B built and pruned on the meta device, importing checkpoints/structure.py without the package __init__."""
    study = run_study(tmp_path, "--plan-only", "--device", "cuda", "--memory-gib", "139", "--pruning-import", "file")
    assert study["pruning_import"]["mode"].startswith("file")
    models = {m["name"]: m for m in study["models"]}
    assert [v["k"] for v in models["llama2-13b"]["variants"]] == [0, 0, 5, 10, 16, 39]
    assert [v["k"] for v in models["llama3-8b"]["variants"]] == [0, 0, 4, 8, 13, 31]
    assert models["llama2-13b"]["param_count"] == models["llama2-13b"]["param_count_expected"] == 13_015_864_320
    assert models["llama3-8b"]["param_count"] == models["llama3-8b"]["param_count_expected"] == 8_030_261_248
    assert all(v["structure_ok"] for m in models.values() for v in m["variants"])
    cells = {(c["model"], c["batch"], c["context"]): c for c in study["cells"]}
    planned = sorted((m, b, c) for (m, b, c), cell in cells.items() if cell["status"] == "planned")
    expected = [(1, 512), (1, 4096), (1, 32768), (16, 512), (16, 4096), (64, 512)]
    assert planned == sorted((m, b, c) for m in models for b, c in expected)
    assert cells[("llama2-13b", 64, 4096)]["reason"].startswith("memory:")
    assert cells[("llama3-8b", 64, 4096)]["reason"].startswith("cost:")
    assert 80 < cells[("llama2-13b", 16, 4096)]["est_memory_gib"] < 0.9 * 139
