"""llama.cpp as the independent engine of the serving tests: run a GGUF file, and llama.cpp's own converter.

llama.cpp runs through `llama_cpp` (llama-cpp-python, which builds llama.cpp from its PyPI sdist). Its HF-to-GGUF
converter (`convert_hf_to_gguf.py`, the `conversion/` package and the `gguf-py` it imports) ships in the same sdist
under `vendor/llama.cpp`: `converter_source()` takes it from `$LLAMA_CPP_SOURCE` (a `vendor/llama.cpp` directory;
.ci/run sets it) or else downloads the sdist of the installed llama-cpp-python version with pip (a package
registry, never a model hub) into the cache, once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from model_support import TEXT

from optimum_gatenorm.checkpoints.models import cache_dir


def converter_source() -> Path:
    """The `vendor/llama.cpp` directory of the installed llama-cpp-python's sdist (converter and gguf-py)."""
    from importlib.metadata import version

    if os.environ.get("LLAMA_CPP_SOURCE"):
        return Path(os.environ["LLAMA_CPP_SOURCE"])
    pinned = version("llama-cpp-python")
    root = cache_dir() / f"llama-cpp-python-{pinned}-sdist"
    source = root / f"llama_cpp_python-{pinned}" / "vendor" / "llama.cpp"
    if (source / "convert_hf_to_gguf.py").is_file():
        return source
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(root)]
        + [f"llama-cpp-python=={pinned}"],
        check=True,
    )
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
    prefix = f"llama_cpp_python-{pinned}/vendor/llama.cpp/"
    with tarfile.open(root / f"llama_cpp_python-{pinned}.tar.gz") as archive:
        members = [m for m in archive.getmembers() if m.name.removeprefix(prefix).startswith(wanted)]
        archive.extractall(root, members=members, filter="data")
    return source


# Runs llama.cpp's converter on a Nemotron-NAS directory, in a fresh interpreter (its vendored gguf-py must not
# mix with the installed `gguf`). Everything but one dispatch is the converter's own code: DeciModel picks its
# vocabulary reader by vocab size (128256: Llama 3's; anything else: Llama 2's sentencepiece-style
# `LlamaHfVocab`), which cannot read other byte-level BPE tokenizers (SmolLM2's), so the converter's own GPT-2 BPE
# path (`_set_vocab_gpt2`, as its LlamaModel uses) is chosen instead; `pre` names the pre-tokenizer when the
# converter's hash table does not know the tokenizer (the tiny test tokenizer).
_CONVERT = """
import sys
from pathlib import Path
source, model_dir, outfile, outtype, pre = sys.argv[1:6]
sys.path[:0] = [source, source + "/gguf-py"]
import gguf, torch
from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

hparams = ModelBase.load_hparams(Path(model_dir), False)
base = get_model_class(get_model_architecture(hparams, ModelType.TEXT))
assert base.__name__ == "DeciModel", base

class Converter(base):
    model_arch = base.model_arch

    def set_vocab(self):
        self._set_vocab_gpt2()

    def get_vocab_base_pre(self, tokenizer):
        return pre or super().get_vocab_base_pre(tokenizer)

ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}[outtype]
with torch.inference_mode():
    model = Converter(Path(model_dir), ftype, Path(outfile), eager=True)
    model.write()
"""


def convert_with_llama_cpp(model_dir: Path, outfile: Path, outtype: str = "f32", pre: str = "") -> Path:
    """Converts a Nemotron-NAS checkpoint to GGUF with llama.cpp's `DeciModel` (see `_CONVERT`)."""
    result = subprocess.run(
        [sys.executable, "-c", _CONVERT, str(converter_source()), str(model_dir), str(outfile), outtype, pre],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return outfile


def _llama(gguf_file: Path):
    """llama.cpp with a float32 KV cache (its default f16 cache alone moves logits by ~1e-3 relative)."""
    from llama_cpp import GGML_TYPE_F32, Llama

    return Llama(
        model_path=str(gguf_file),
        n_ctx=256,
        n_batch=256,
        logits_all=True,
        verbose=False,
        n_threads=2,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
    )


def llama_cpp_greedy(gguf_file: Path, prompt: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
    """Greedy decoding on llama.cpp: returns the new tokens and the logits at every position (prompt + new)."""
    llm = _llama(gguf_file)
    llm.eval(prompt)
    tokens = []
    for _ in range(new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(token)
        llm.eval([token])
    logits = np.array(llm.scores[: llm.n_tokens], dtype=np.float32)
    llm.close()
    return tokens, logits


def llama_cpp_logits(gguf_file: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position of `ids` (teacher-forced)."""
    llm = _llama(gguf_file)
    llm.eval(ids)
    logits = np.array(llm.scores[: llm.n_tokens], dtype=np.float32)
    llm.close()
    return logits


# --- what the tests check of a GGUF file run by llama.cpp ---------------------------------------------------------

# f32 GGUF vs PyTorch float32: largest |logit difference| relative to the largest |logit| (llama.cpp sums in
# another order and uses its own rope/softmax kernels; KV cache in f32: measured ~2e-6 on the tiny model).
F32_TOL = 1e-4
# f16 / q8_0 weights: relative logit error, and the share of positions whose top token agrees. q8_0 also quantizes
# the activations in each matmul; on the tiny random model (large weights, near-tied logits) measured: 0.10 and
# 91% of positions; on SmolLM2 the top token agrees more often.
LOOSE_TOL = {"f16": 0.02, "q8_0": 0.15}
LOOSE_TOP1 = 0.85
NEW_TOKENS = 32


def prompt_ids(directory) -> list[int]:
    """The token ids of the first 60 characters of TEXT, by the model's own tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    return tokenizer(TEXT[:60]).input_ids


def torch_greedy(model, prompt: list[int]) -> tuple[list[int], np.ndarray]:
    # Exactly NEW_TOKENS argmax steps with nothing masked, as `llama_cpp_greedy` does. (`generate`'s
    # min_new_tokens masks EOS until the minimum length: a pruned model whose greedy choice is EOS then diverges.)
    out = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            next_token = model(out).logits[0, -1].argmax()
            out = torch.cat([out, next_token.view(1, 1)], dim=1)
        logits = model(out).logits[0].float().numpy()
    return out[0, len(prompt) :].tolist(), logits


def check_parity(model, gguf_file, prompt):
    """llama.cpp's greedy tokens equal PyTorch's and every position's logits agree within F32_TOL."""
    expected_tokens, expected_logits = torch_greedy(model, prompt)
    tokens, logits = llama_cpp_greedy(gguf_file, prompt, NEW_TOKENS)
    assert tokens == expected_tokens
    assert logits.shape == expected_logits.shape
    error = np.abs(logits - expected_logits).max() / np.abs(expected_logits).max()
    assert error < F32_TOL, error
    return error


def gguf_fields(gguf_file) -> dict:
    import gguf

    reader = gguf.GGUFReader(gguf_file)
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.t")}


def check_quantized(gguf_file, model, prompt: list[int], quantize: str) -> dict:
    """A file from llama.cpp's quantizer: its file type, every weight matrix quantized (norms f32), and llama.cpp
    running it with logits near PyTorch's (q8_0 within LOOSE_TOL; q4_k_m, on the tiny random model, measured 0.44
    relative and 48-51% top-1 agreement, against ~0.3% for unrelated logits). Returns the file's fields."""
    import gguf
    import llama_cpp

    reader = gguf.GGUFReader(gguf_file)
    fields = {name: field.contents() for name, field in reader.fields.items() if name.startswith("general.")}
    assert fields["general.file_type"] == getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quantize.upper()}")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    matrices = {name: kind for name, kind in types.items() if not name.endswith("norm.weight")}
    assert "F16" not in matrices.values() and "F32" not in matrices.values(), matrices
    assert all(types[name] == "F32" for name in types if name.endswith("norm.weight"))
    if quantize == "q4_k_m":
        assert "Q4_K" in matrices.values()  # the k-quant itself, where the rows allow it (the tiny MLP's 256)
    ids = prompt + list(range(3, 3 + NEW_TOKENS))
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    logits = llama_cpp_logits(gguf_file, ids)
    error = np.abs(logits - expected).max() / np.abs(expected).max()
    agreement = (logits.argmax(-1) == expected.argmax(-1)).mean()
    if quantize == "q8_0":
        assert error < LOOSE_TOL["q8_0"] and agreement >= LOOSE_TOP1, (error, agreement)
    else:
        assert error < 0.6 and agreement >= 0.3, (error, agreement)
    tokens, _ = llama_cpp_greedy(gguf_file, prompt, NEW_TOKENS)
    assert len(tokens) == NEW_TOKENS
    return {**fields, **gguf_fields(gguf_file)}
