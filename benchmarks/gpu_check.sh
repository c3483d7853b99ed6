#!/usr/bin/env bash
# The project's first GPU run, in one command (about ten minutes on one H100; nothing to download):
#
#     make gpu-check                 # = bash benchmarks/gpu_check.sh; outputs under outputs/gpu_check
#
# 1. SFT, the demo's (experiment=demo), with trainer=gpu (bf16-mixed);
# 2. GRPO, the demo's four steps (experiment=demo_grpo) from that adapter, trainer=gpu, rollouts from the policy
#    (generation.backend=hf), and, where vLLM is installed (pip install -e '.[vllm]'), from a colocated vLLM engine
#    (generation.backend=vllm, from a fresh LoRA: the demo's SFT adapter may add <think> tokens vLLM's copy lacks);
#    each one's seconds per optimizer step and reward;
# 3. benchmarks/sft_vs_trl.py in bf16 on the GPU: tokens/s, ours against TRL's SFTTrainer, and the ratio (needs the
#    bench extra: pip install -c constraints.txt -e '.[bench]');
# 4. benchmarks/latent_bon_overhead.py in bf16 on the GPU: what latent Best-of-N adds to plain sampling.
# A step that fails prints its log's tail and the script goes on; the exit status says whether all passed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-outputs/gpu_check}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
rm -rf "$OUT" && mkdir -p "$OUT"
failed=0

step() {  # step NAME COMMAND...: run it, its output in $OUT/NAME.log, its time and status printed
  local name=$1 start=$SECONDS
  shift
  echo "== $name: $*"
  if "$@" > "$OUT/$name.log" 2>&1; then
    echo "   ok in $((SECONDS - start)) s"
  else
    echo "   FAILED (exit $?) in $((SECONDS - start)) s; the end of $OUT/$name.log:"
    tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
    failed=1
  fi
}

metrics() {  # metrics RUN: what a training run measured
  "$PY" - "$1" <<'PY'
import json, sys
from pathlib import Path
path = Path(sys.argv[1]) / "metrics.json"
if path.is_file():
    m = json.loads(path.read_text())
    keys = ("train/step_time", "train/reward", "train/entropy", "train/completions/mean_length", "train/sampling/importance_sampling_ratio/mean")
    print("   " + ", ".join(f"{k.removeprefix('train/')} {m[k]:.4g}" for k in keys if k in m))
PY
}

"$PY" - <<'PY' || exit 1
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_check: no CUDA GPU is visible here; run it on a GPU machine")
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__} (CUDA {torch.version.cuda}), bf16 {torch.cuda.is_bf16_supported()}")
PY

step sft_demo "$PY" train.py experiment=demo trainer=gpu hydra.run.dir="$OUT/sft"
step grpo_hf "$PY" train.py experiment=demo_grpo trainer=gpu algorithm.module.init_adapter="$OUT/sft/adapter" hydra.run.dir="$OUT/grpo_hf"
metrics "$OUT/grpo_hf"
if "$PY" -c "import vllm" 2> /dev/null; then
  step grpo_vllm "$PY" train.py experiment=demo_grpo trainer=gpu generation.backend=vllm algorithm.module.init_adapter=null \
    "+algorithm.module.lora={r: 32, alpha: 64, dropout: 0.05}" hydra.run.dir="$OUT/grpo_vllm"
  metrics "$OUT/grpo_vllm"
else
  echo "== grpo_vllm: skipped, vLLM is not installed (pip install -e '.[vllm]')"
fi
if "$PY" -c "import trl" 2> /dev/null; then
  step sft_vs_trl "$PY" benchmarks/sft_vs_trl.py --device cuda --bf16 --traces 64 --batch-size 8 --max-length 1024 --steps 20
  grep -E "tokens/s|ours|TRL" "$OUT/sft_vs_trl.log" | tail -n 4 | sed 's/^/   /'
else
  echo "== sft_vs_trl: skipped, TRL is not installed (pip install -c constraints.txt -e '.[bench]')"
fi
step latent_bon "$PY" benchmarks/latent_bon_overhead.py --device cuda --dtype bfloat16 --prompts 32 --n 8 --max-new-tokens 256
tail -n 12 "$OUT/latent_bon.log" | sed 's/^/   /'
exit $failed
