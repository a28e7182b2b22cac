"""Tiny random models for every supported architecture, and checkpoint helpers."""

from __future__ import annotations

import json
import os
import platform
import string
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

from optimum_gatenorm.adapters import get_adapter, supported_model_types
from optimum_gatenorm.compat import TRANSFORMERS_VERSION, has_onnx, has_onnxruntime


# Where the tests are, wherever a test file sits in the tree below (tests/ mirrors the package, docs/development.md).
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

# No hub is reachable here or in CI: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# --- which tests this environment runs ------------------------------------------------------------------------------
# The suite runs in two environments (docs/development.md; `.ci/test` runs both): the transformers 4.57 line with the
# [onnx,onnxruntime] extras, and the 5.x line with the core only (optimum-onnx pins transformers<4.58). Tests marked
# `onnx` need the extras; tests marked `no_onnx` check what a user without them sees. Each set runs in exactly one
# of the two environments, so each is skipped, with this reason, in the other.
HAS_ONNX = has_onnx() and has_onnxruntime()
SKIP_ONNX = "needs the [onnx,onnxruntime] extras (the transformers 4.57 environment of `.ci/test` runs it)"
SKIP_NO_ONNX = "checks the refusal without the [onnx] extra (the transformers 5 environment of `.ci/test` runs it)"

# The other transformers line's python, for the tests that move checkpoints between lines (`.ci/test` sets it).
OTHER_PYTHON_ENV = "OPTIMUM_GATENORM_OTHER_PYTHON"
# Set by `.ci/test`: a test that needs the other line fails instead of skipping when it is missing.
STRICT_ENV = "OPTIMUM_GATENORM_TEST_BOTH_LINES"
# Set by `.ci/test` on its transformers 4.57 line: the `one_line` tests (the real-model criterion claims, the same
# numbers on both lines, whose logits the cross-line tests compare) run on the other line only, which keeps the two
# lines of CI, run side by side, about equally long. Anywhere else they run.
ONE_LINE_ELSEWHERE_ENV = "OPTIMUM_GATENORM_ONE_LINE_ELSEWHERE"


# --- tiers (docs/development.md, "Test tiers"; `bash .ci/test --tier NAME`) ---------------------------------------
# fast: tiny models in this process; process: tiny models through real processes (the optimum-cli executable, the
# other transformers line, llama.cpp's converter, a compiler); real: the real models. A test of the fast tier that
# starts a process fails (below), so the fast tier stays fast and a contributor sees where to mark it.
# `platform.processor()` asks `uname -p` once and caches it (the machine records do): ask here, outside any test.
platform.processor()
TIERS = {"fast": "not real and not process", "process": "process and not real", "real": "real"}


def pytest_addoption(parser):
    parser.addoption(
        "--tier",
        help=f"run these tiers only, comma-separated ({', '.join(TIERS)}); combines with -m",
    )


def pytest_configure(config):
    value = config.getoption("tier")
    if not value:
        return
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in TIERS]
    if unknown or not names:
        raise pytest.UsageError(f"--tier takes {', '.join(TIERS)} (comma-separated), got {value!r}")
    tiers = " or ".join(f"({TIERS[name]})" for name in names)
    config.option.markexpr = f"({tiers}) and ({config.option.markexpr})" if config.option.markexpr else tiers


_RUNNING: dict = {"item": None}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _RUNNING["item"] = item


@pytest.fixture(autouse=True, scope="session")
def _processes_are_the_process_tier():
    """Every process a test (or a fixture it sets up) starts goes through `subprocess.Popen`: refuse it in the fast
    tier, naming the test and the command."""
    original = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):
        item = _RUNNING["item"]
        if item is not None and not (item.get_closest_marker("process") or item.get_closest_marker("real")):
            command = " ".join(map(str, args if isinstance(args, (list, tuple)) else [args]))[:120]
            raise AssertionError(
                f"{item.nodeid} starts a process ({command}): mark it `@pytest.mark.process` (the process tier)"
            )
        original(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = guarded
    yield
    subprocess.Popen.__init__ = original


def pytest_collection_modifyitems(config, items):
    if os.environ.get(ONE_LINE_ELSEWHERE_ENV):
        elsewhere = [item for item in items if "one_line" in item.keywords]
        if elsewhere:
            config.hook.pytest_deselected(items=elsewhere)
            items[:] = [item for item in items if "one_line" not in item.keywords]
    for item in items:
        if "onnx" in item.keywords and not HAS_ONNX:
            item.add_marker(pytest.mark.skip(reason=SKIP_ONNX))
        if "no_onnx" in item.keywords and HAS_ONNX:
            item.add_marker(pytest.mark.skip(reason=SKIP_NO_ONNX))


@pytest.fixture(scope="session")
def other_python() -> Path:
    """The python of a virtualenv on the other transformers line (4.57 here on 5.x, and the reverse)."""
    value = os.environ.get(OTHER_PYTHON_ENV)
    if not value:
        message = f"needs the other transformers line: set {OTHER_PYTHON_ENV} to its venv's python (`.ci/test` does)"
        if os.environ.get(STRICT_ENV):
            pytest.fail(message)
        pytest.skip(message)
    python = Path(value)
    assert python.is_file(), f"{OTHER_PYTHON_ENV}={value} does not exist"
    version = subprocess.run(
        [str(python), "-c", "import transformers; print(transformers.__version__)"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.strip()  # fmt: skip
    assert version.split(".")[0] != str(TRANSFORMERS_VERSION.major), (
        f"{OTHER_PYTHON_ENV} has transformers {version}, the same line as this one ({TRANSFORMERS_VERSION})"
    )
    return python


# One tiny config per registered model type, declared by its adapter (`ArchitectureAdapter.tests.tiny_config`: hidden 32,
# 4 layers, 4 query heads; test_adapters checks that none is missing), plus variants that cover MHA / GQA / MQA and
# both GPT-NeoX residual styles. Every test parametrised over ALL_TINY picks up a new adapter without edits.
TINY_CONFIGS = {
    model_type: dict(model_type=model_type, **get_adapter(model_type).tests.tiny_config)
    for model_type in supported_model_types()
    if get_adapter(model_type).tests.tiny_config
}
VARIANTS = {
    "llama_mha": dict(TINY_CONFIGS["llama"], num_key_value_heads=4),
    "gpt_neox_sequential": dict(TINY_CONFIGS["gpt_neox"], use_parallel_residual=False),
    "phi3_mha": dict(TINY_CONFIGS["phi3"], num_key_value_heads=4),
}
ALL_TINY = {**TINY_CONFIGS, **VARIANTS}


def tiny_config(name: str, **overrides):
    spec = dict(ALL_TINY[name], **overrides)
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(model_type, **spec)
    config._attn_implementation = "eager"
    return config


def tiny_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A tiny random model; weights are scaled up so attention patterns are far from uniform."""
    torch.manual_seed(seed)
    config = tiny_config(name, **overrides)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    return model.to(dtype).eval()


def save_sharded(model, directory: Path, num_shards: int = 3) -> Path:
    """Saves `model` as a sharded safetensors checkpoint with `model.safetensors.index.json`."""
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    names = sorted(state)
    weight_map = {}
    for shard in range(num_shards):
        part = names[shard::num_shards]
        file = f"model-{shard + 1:05d}-of-{num_shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, directory / file, metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def tiny_tokenizer():
    """A character-level fast tokenizer (98 ids, within the tiny models' vocabulary of 128) with eos and pad."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<eos>"]
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {token: i for i, token in enumerate(specials + chars)}
    # BPE without merges splits text into single characters; Fuse decodes them back without spaces.
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>", model_max_length=128
    )
