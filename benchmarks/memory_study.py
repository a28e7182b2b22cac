"""Peak memory of `prune` against the size of the model: what a larger model needs (#34 item 3).

    python benchmarks/memory_study.py [--cases smollm2,gemma3,random1b,random1b-streamed]
        [--output benchmarks/memory/summary.json]

Each case runs `optimum-cli gatenorm prune` in its own process (`--device cpu`), and the peak resident set size of
that process is read from the kernel when it exits (`os.wait4`'s `ru_maxrss`), beside the wall time and the bytes of
the model's safetensors files:

- `smollm2`, `gemma3`: the built-in models with the defaults (k = 4, `cosine_self`, `linear` replacements fitted on
  self-sampled text): every forward pass the default needs;
- `random1b`: a random Llama of about 1.1 B parameters (hidden 2048, 22 layers, MLP 5632, GQA 32/4: TinyLlama-1.1B's
  shape; float32, 4.4 GB) written once into the cache, pruned by k = 4 with the weight-only `gate_norm` and plain
  removal (no forward pass): the floor of what pruning a model costs loaded, the whole model in memory once;
- `CASE-streamed` (`random1b-streamed`, `smollm2-streamed`, `gemma3-streamed`): the same data-free prune (k = 4,
  `gate_norm`, plain removal) under `--max-memory 100MB`, smaller than every model: pruned file to file, one tensor
  at a time, never loaded (`checkpoints.streaming`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from harness.writers import write_json


CLI = Path(sys.executable).parent / "optimum-cli"


def _random_1b(root: Path) -> Path:
    directory = root / "random-llama-1.1b"
    if (directory / "config.json").is_file():
        return directory
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama", vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    model.save_pretrained(directory, max_shard_size="1GB")
    del model
    return directory


def _model_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("*.safetensors"))


def _run(args: list[str]) -> dict:
    """Runs one command; its peak RSS comes from the kernel's accounting of that process when it is reaped."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(
            [str(CLI), "gatenorm", *args], stdout=out, stderr=err, text=True,
            env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1"),
        )  # fmt: skip
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if process.returncode:
            raise SystemExit(f"prune failed ({process.returncode}): {err.read()[-2000:]}")
        return {
            "peak_rss_bytes": usage.ru_maxrss * 1024,
            "seconds": round(seconds, 1),
            "stdout_tail": out.read()[-300:],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="smollm2,gemma3,random1b")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/memory/summary.json"))
    args = parser.parse_args()

    from optimum_gatenorm import resolve_model
    from optimum_gatenorm.checkpoints.models import cache_dir

    root = cache_dir() / "memory_study"
    root.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc)
    rows = {}
    for case in args.cases.split(","):
        out = root / f"{case}-pruned"
        name, _, variant = case.partition("-")
        if name == "random1b":
            model = _random_1b(root)
            extra = ["--criterion", "gate_norm", "--replacement", "none"]
        else:
            model = resolve_model({"smollm2": "smollm2-135m", "gemma3": "gemma3-270m"}[name])
            extra = []
        if variant == "streamed":  # under a budget smaller than the model: pruned file to file, never loaded
            extra = ["--criterion", "gate_norm", "--replacement", "none", "--max-memory", "100MB"]
        elif variant:
            raise SystemExit(f"unknown case {case!r}")
        command = ["prune", "--model", str(model), "--num-layers", "4", "--output", str(out), "--overwrite"]
        command += ["--device", "cpu", *extra]
        row = _run(command)
        row.update(model_bytes=_model_bytes(model), command="optimum-cli gatenorm " + " ".join(command))
        row["peak_over_model"] = round(row["peak_rss_bytes"] / row["model_bytes"], 2)
        rows[case] = row
        print(json.dumps({case: {k: v for k, v in row.items() if k != "stdout_tail"}}), flush=True)
    summary = {
        "command": "python benchmarks/memory_study.py --cases " + args.cases,
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPU cores, {platform.platform()}",
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, summary, indent=2)


if __name__ == "__main__":
    main()
