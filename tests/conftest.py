"""Tiny random models for every supported architecture, and checkpoint helpers."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM


# No hub is reachable here or in CI: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# One tiny config per registered model type (test_adapters checks that none is missing), plus variants that
# cover MHA / GQA / MQA and both GPT-NeoX residual styles. hidden 32, 4 layers, 4 query heads.
_COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4)
TINY_CONFIGS = {
    "llama": dict(model_type="llama", num_key_value_heads=2, max_position_embeddings=128, **_COMMON),
    "mistral": dict(model_type="mistral", num_key_value_heads=1, max_position_embeddings=128, **_COMMON),
    "qwen2": dict(model_type="qwen2", num_key_value_heads=2, max_position_embeddings=128, **_COMMON),
    "phi3": dict(
        model_type="phi3",
        num_key_value_heads=2,
        max_position_embeddings=128,
        original_max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **_COMMON,
    ),
    "gpt2": dict(model_type="gpt2", vocab_size=128, n_embd=32, n_layer=4, n_head=4, n_positions=128),
    "gpt_neox": dict(
        model_type="gpt_neox", rotary_pct=0.5, use_parallel_residual=True, max_position_embeddings=128, **_COMMON
    ),
}
VARIANTS = {
    "llama_mha": dict(TINY_CONFIGS["llama"], num_key_value_heads=4),
    "gpt_neox_sequential": dict(TINY_CONFIGS["gpt_neox"], use_parallel_residual=False),
    "phi3_mha": dict(TINY_CONFIGS["phi3"], num_key_value_heads=4),
}
ALL_TINY = {**TINY_CONFIGS, **VARIANTS}


def tiny_config(name: str):
    spec = dict(ALL_TINY[name])
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(model_type, **spec)
    config._attn_implementation = "eager"
    return config


def tiny_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A tiny random model; weights are scaled up so attention patterns are far from uniform."""
    torch.manual_seed(seed)
    config = tiny_config(name)
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
