#!/usr/bin/env bash
# MaPO vs Diffusion-DPO on one GPU in under 5 minutes, set-up included: the real SDXL UNet (2.57 B parameters,
# random init, no download) at 1024 px under bf16 mixed precision, full fine-tune and LoRA, step time and peak
# memory as absolute numbers and MaPO/DPO ratios with the GPU's name, then the largest batch of a full
# fine-tune for each method (doubling then bisection, at most 16 pairs, one process per method).
#   bash benchmarks/gpu_wheels.sh      # once, on a machine with a registry (wheels/ beside this script)
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# Missing packages are installed from benchmarks/wheels/ only (never downloaded); the repository itself is
# used through PYTHONPATH. Results: OUT_DIR/gpu_check.json and .txt (default: $OUT, else ./gpu-check).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
start=$(date +%s)
missing=$(python3 - <<'PY'
import importlib.util
need = {"diffusers": "diffusers", "pydantic": "pydantic", "open_clip": "open_clip_torch", "ftfy": "ftfy",
        "datasets": "datasets", "transformers": "transformers", "accelerate": "accelerate", "peft": "peft",
        "safetensors": "safetensors", "pyarrow": "pyarrow", "rich": "rich", "yaml": "pyyaml", "scipy": "scipy"}
print(" ".join(package for module, package in need.items() if importlib.util.find_spec(module) is None))
PY
)
if [ -n "$missing" ]; then
  echo "installing from $here/wheels: $missing"
  python3 -m pip install -q --no-index --find-links "$here/wheels" $missing \
    || { echo "gpu_check: could not install $missing from $here/wheels (run benchmarks/gpu_wheels.sh where a registry is reachable)"; exit 2; }
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 MAPO_BENCH_THREADS=${MAPO_BENCH_THREADS:-8}
# One line and exit 2 where there is no GPU (the same code path runs on a CPU, tiny: see docs/performance.md).
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" \
  || { echo "gpu_check: torch sees no CUDA device here; run it on a GPU machine (docs/performance.md: CPU dry run)"; exit 2; }
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
fi
timeout 270 python3 "$here/train_step.py" --size sdxl --resolution 1024 --mixed-precision bf16 --modes full,lora \
  --rounds 1 --repeats 3 --warmup 2 --find-max-batch --max-batch 16 --json "$out/gpu_check.json" | tee "$out/gpu_check.txt"
echo "gpu_check: $(( $(date +%s) - start )) s in all; results in $out"
