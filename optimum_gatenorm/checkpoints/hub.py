"""Hub ids: `--model ORG/NAME[@REVISION]` resolved through `huggingface_hub`, as every tool of the ecosystem does.

A value that is not a local path, a `.gguf` file or a built-in alias, and has the shape of a hub id, is resolved
by `huggingface_hub.snapshot_download`: from the local Hugging Face cache when the hub is offline
(`HF_HUB_OFFLINE=1`, or no network), downloading what is missing otherwise (with huggingface_hub's progress bar).
Only what a checkpoint needs is fetched: the configs, the tokenizer files and the `*.safetensors` weights, never
pickled weights (`*.bin`, `*.pt`), so a model published only in pickle form downloads no weights and is refused by
the checkpoint checks as any local directory would be.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..errors import ModelNotFoundError


__all__ = ["HUB_FILE_PATTERNS", "download", "hub_offline", "parse_hub_id"]

logger = logging.getLogger(__name__)

# What a safetensors checkpoint and its tokenizer consist of; `*.txt` covers merges.txt / vocab.txt, `*.model` a
# SentencePiece tokenizer, `*.jinja` a chat template stored beside the tokenizer config.
HUB_FILE_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")

# The hub's own rule for repo names (`huggingface_hub.utils.validate_repo_id`): letters, digits, `-`, `_`, `.`,
# at most 96 characters, no `--` or `..`, not starting or ending with `-` or `.`. A revision is a branch, a tag or
# a commit hash.
_NAME = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[\w.][\w./-]*))?$")
_TRUE = {"1", "true", "yes", "on"}


def parse_hub_id(text: str | os.PathLike) -> tuple[str, str | None] | None:
    """`(repo_id, revision)` for a value shaped like a hub id (`ORG/NAME` or `ORG/NAME@REVISION`), else None.

    Only the shape is checked: the caller tries local paths first, so `./org/name`, `/abs/path`, `~/x`, a `.gguf`
    file and a path with more than one `/` are never taken for hub ids.
    """
    text = str(text)
    if text.lower().endswith(".gguf") or ".." in text or "--" in text.split("@", 1)[0]:
        return None
    match = _HUB_ID.match(text)
    if match is None:
        return None
    return match["repo"], match["revision"]


def hub_offline() -> bool:
    """Whether the hub must not be contacted: `HF_HUB_OFFLINE` as set now (huggingface_hub reads it on import)."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().lower() in _TRUE
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def download(repo_id: str, revision: str | None = None, *, cache_dir: str | Path | None = None) -> Path:
    """The local snapshot directory of a hub model: from the cache when offline, downloading what is missing otherwise.

    Args:
        repo_id: `ORG/NAME`.
        revision: A branch, tag or commit hash (default: `main`).
        cache_dir: The Hugging Face cache (default: huggingface_hub's, `HF_HUB_CACHE` / `HF_HOME`).

    Raises:
        ModelNotFoundError: If the model is neither in the cache nor downloadable (offline, no network, no such
            repository or revision, a gated model without a token), naming what to run.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    name = repo_id if revision is None else f"{repo_id}@{revision}"
    fetch = f"hf download {repo_id}" + ("" if revision is None else f" --revision {revision}")
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=list(HUB_FILE_PATTERNS),
            local_files_only=offline,
        )
    # LocalEntryNotFoundError first: in huggingface_hub 0.x it subclasses the HTTP errors below.
    except LocalEntryNotFoundError:
        why = "the hub is offline (HF_HUB_OFFLINE=1)" if offline else "the hub cannot be reached"
        raise ModelNotFoundError(
            f"hub model {name!r} is not in the Hugging Face cache and {why}: run `{fetch}` on a machine with network "
            "access (same HF_HOME), or pass a local model directory"
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"hub model {repo_id!r} has no revision {revision!r}: check --revision") from None
    except GatedRepoError:
        raise ModelNotFoundError(
            f"hub model {repo_id!r} is gated: accept its licence on huggingface.co and log in (`hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"hub model {repo_id!r} not found on the hub (or private): check the id, or log in (`hf auth login`)"
        ) from None
    logger.debug("Using hub model %s from %s", name, path)
    return Path(path)
