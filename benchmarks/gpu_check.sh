#!/usr/bin/env bash
# GPU check of the speed work, for one lent CUDA GPU (about 4 minutes on an H100).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # from anywhere; OUT_DIR defaults to /tmp/resbench_gpu_check
#
# Prints one JSON record per `resbench bench` configuration (each also saved in OUT_DIR), then
# runs the tests marked `cuda`. Targets on an H100: depth 20 width 1 fp32 > 80,000 images/s,
# depth 18 bf16 > 25,000 images/s. Each bench is capped at 150 s so one hang cannot eat the lease.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT=${1:-/tmp/resbench_gpu_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

bench() {  # bench NAME FLAGS...: one configuration against the plain eager step, as JSON
    local name=$1; shift
    timeout 150 $PY -m resbench bench --device cuda --vs --json --warmup 10 --windows 5 "$@" >"$OUT/$name.json"
    echo "== $name (exit $?)"; cat "$OUT/$name.json"
}
bench d20_fp32_eager     --resnet_depth 20 --iters 50 --compile false
bench d20_fp32_compiled  --resnet_depth 20 --iters 50 --compile true
bench d18_bf16_eager     --resnet_depth 18 --iters 20 --mixed_precision bf16 --compile false
bench d18_bf16_compiled  --resnet_depth 18 --iters 20 --mixed_precision bf16 --compile true
bench d18_fp16_eager     --resnet_depth 18 --iters 20 --mixed_precision fp16 --compile false
bench d18_fp16_compiled  --resnet_depth 18 --iters 20 --mixed_precision fp16 --compile true

echo "== pytest -m cuda"
timeout 300 $PY -m pytest tests -m cuda -q -p no:cacheprovider 2>&1 | tail -n 25
