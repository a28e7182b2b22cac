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
