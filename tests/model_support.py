"""Models, tokenizers and checks that tests of several folders share, beyond conftest's tiny models."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
from conftest import tiny_model
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from optimum_gatenorm import prune_model
from optimum_gatenorm.criteria.calibration import Calibration
from optimum_gatenorm.pruning.replacement import fit_replacements


# Token ids every tiny vocabulary has (>= 98 entries), two rows of 7.
IDS = torch.tensor([[3, 9, 27, 81, 115, 12, 40], [7, 21, 63, 101, 45, 8, 90]])
# Prompts longer than the sliding windows of the tiny mixed-type models (4), so the cached generation after
# reloading crosses them.
LONG_IDS = torch.tensor([[3, 9, 27, 81, 115, 12, 40, 5, 77, 2], [7, 21, 63, 101, 45, 8, 90, 14, 33, 66]])
# Layers a test replaces by default, layer 0 included.
REPLACED = [0, 2]
TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families."
)


def random_windows(seed: int = 0, num_samples: int = 8, length: int = 24) -> Calibration:
    generator = torch.Generator().manual_seed(seed)
    return Calibration(torch.randint(0, 98, (num_samples, length), generator=generator))


def replaced_model(name: str, kind: str, layers=REPLACED):
    """A tiny model with `layers` replaced by `kind` fitted on random windows (`none`: removed plainly)."""
    model = tiny_model(name)
    fit = None
    if kind != "none":
        fit = fit_replacements(model, layers, kind, random_windows())
    prune_model(model, layers, replacements=fit.layers if fit else None)
    return model


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE (GPT-2 pre-tokenizer, 300 ids, real merges) that llama.cpp's gpt2 vocab can load."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([TEXT] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def nemotron_llama():
    """Tiny random Llama (GQA 4/2, hidden 64, 4 layers) whose MLP width 256 Nemotron-NAS can express."""
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama",
        vocab_size=320,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        # Not the default 10000: a writer reading the default instead (5.x configs keep it in rope_parameters
        # only) would give llama.cpp other logits.
        rope_theta=1000.0,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
    return model


# A fresh interpreter loads a saved checkpoint with transformers alone (or after `imports`) and compares its logits
# and cached generation with the ones saved beside it: prints LOAD FAILED (exit 3), IDENTICAL or DIFFERENT.
FRESH_LOAD = """
import sys, torch
{imports}
from transformers import AutoModelForCausalLM
try:
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], attn_implementation="eager").eval()
except Exception as error:
    print("LOAD FAILED:", type(error).__name__, " ".join(str(error).split()))
    sys.exit(3)
expected = torch.load(sys.argv[2])
with torch.no_grad():
    same = torch.equal(model(expected["ids"]).logits, expected["logits"])
    tokens = model.generate(expected["ids"], max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
    same = same and torch.equal(tokens, expected["tokens"])
print("IDENTICAL" if same else "DIFFERENT")
"""


def save_for_fresh_load(model, directory):
    """`model` saved to `directory / "model"`, with what `run_fresh` compares against in `directory / "expected.pt"`:
    its logits on LONG_IDS and its tokens generated without the cache (the reloaded model's cache must reproduce
    them)."""
    model.save_pretrained(directory / "model")
    with torch.no_grad():
        tokens = model.generate(LONG_IDS, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
        torch.save({"ids": LONG_IDS, "logits": model(LONG_IDS).logits, "tokens": tokens}, directory / "expected.pt")
    return directory


def run_fresh(saved, imports: str):
    script = textwrap.dedent(FRESH_LOAD.format(imports=imports))
    return subprocess.run(
        [sys.executable, "-c", script, str(saved / "model"), str(saved / "expected.pt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
