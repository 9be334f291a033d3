#!/usr/bin/env bash
# What to check on one lent CUDA GPU, in one go. A session's device time is short (15 minutes in all,
# 10 a command, the machine's start included), so the default stages (1-5 and 9) are the ones a closing
# note needs, about 6 minutes on an H200 (stages 1-5 took 53, 61, 42, 42 and 65 s on 2026-11-26; 9 is
# new and unmeasured, capped at 150 s; a cold inductor cache makes the first runs slower). Stages 6-8
# are long: ask for them by name in a session of their own.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # from anywhere; OUT_DIR defaults to /tmp/resbench_gpu_check
#   STAGES=26 bash benchmarks/gpu_check.sh      # only stages 2 and 6
#
# 1. the tests marked `cuda`;
# 2. `resbench train` as users run it with CUDA graphs: depth 20 fp32 compiled on a synthetic
#    CIFAR10_x32 of the real size (random pixels: the figure is speed, not accuracy) across
#    evaluations and checkpoints, stopped by SIGTERM after its first checkpoint, then resumed;
# 3. fp16 training with loss scaling (skipped steps counted) on the Digits_x32 demo, compiled;
# 4. `--deterministic`: two identical runs must end with bit-identical weights;
# 5. `resbench bench` for the README's speed table (depth 20 fp32, depth 18 bf16);
# 6. benchmarks/profile_step.py: where the depth-20 step's GPU time goes, compile modes compared;
# 7. `resbench bench --grid seed`: every row of the seed's table timed (compiled, evaluations
#    counted), and the projected total for the table (issue 17's 2-GPU-hour target);
# 8. filling the GPU with several depth-20 runs: K seeds packed into one network (`--pack K`)
#    against K separate processes running at once (what `sweep --jobs K` does), without MPS;
# 9. the ImageNet rows' paths (issue 38): batches streamed from a memory-mapped ImageNet1k_x32 file
#    to the GPU against the fp16 step of ResNet-18 at the reference's 512 images per GPU, and
#    `--bn_groups 2` on the GPU (one device computing BatchNorm as the reference's two).
# Each stage has a time cap so one hang cannot eat the lease; results are also saved in OUT_DIR.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT=${1:-/tmp/resbench_gpu_check}
WORK=$(mktemp -d)  # data and run folders: large, not worth copying back
mkdir -p "$OUT"
STAGES=${STAGES:-123459}
stage() { echo; echo "== $* ($(date +%T))"; }
want() { [[ $STAGES == *$1* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

if want 1; then
stage "1. pytest -m cuda"
timeout 240 $PY -m pytest tests -m cuda -q -p no:cacheprovider 2>&1 | tail -n 15
fi

if want 2; then
stage "2. train depth 20 fp32 compiled, synthetic CIFAR10_x32, SIGTERM after the first checkpoint, resume"
$PY - "$WORK/data/CIFAR10_x32" <<'EOF'
import sys, pathlib, numpy as np
folder = pathlib.Path(sys.argv[1]); folder.mkdir(parents=True)
rng = np.random.default_rng(0)
for split, n in (("train", 50_000), ("test", 10_000)):
    np.save(folder / f"{split}_images.npy", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    np.save(folder / f"{split}_labels.npy", rng.integers(0, 10, n, dtype=np.int64))
EOF
TRAIN=($PY -m resbench train --data_name CIFAR10_x32 --data_root "$WORK/data" --resnet_depth 20 --optim_ni 4000
       --eval_every 1000 --device cuda --compile true --save "$WORK/runs/d20")
TORCH_LOGS=perf_hints timeout 240 "${TRAIN[@]}" >"$OUT/train_first.log" 2>&1 &
pid=$!
for _ in $(seq 240); do [ -f "$WORK/runs/d20/last.pt" ] && break; sleep 0.5; done
sleep 1; kill -TERM $pid; wait $pid; echo "first run exit $? (130 = stopped by the signal, state saved)"
tail -n 4 "$OUT/train_first.log"
timeout 240 "${TRAIN[@]}" >"$OUT/train_resume.log" 2>&1; echo "resumed run exit $?"
tail -n 8 "$OUT/train_resume.log"
cp "$WORK/runs/d20/metrics.jsonl" "$WORK/runs/d20/summary.json" "$OUT/" 2>/dev/null
$PY - "$WORK/runs/d20" <<'EOF'
import json, sys, pathlib
run = pathlib.Path(sys.argv[1])
iters = [json.loads(l)["iter"] for l in (run / "metrics.jsonl").read_text().splitlines()]
s = json.loads((run / "summary.json").read_text())
print("evaluations at", iters, "| status", s["status"], "| iterations", s["iterations"],
      "| training images/s", round(s["images_per_sec"]), "| wall", round(s["wall_seconds"], 1), "s")
assert iters == [1000, 2000, 3000, 4000], iters
EOF
grep -i "cudagraph" "$OUT/train_first.log" | sort | uniq -c | head -n 5
fi

if want 3; then
stage "3. fp16 compiled on Digits_x32 (loss scaling, skipped steps)"
timeout 180 $PY -m resbench train --data_name Digits_x32 --resnet_depth 20 --optim_ni 1000 --eval_every 500 \
    --device cuda --compile true --mixed_precision true --save "$WORK/runs/fp16" >"$OUT/train_fp16.log" 2>&1
echo "exit $?"; tail -n 3 "$OUT/train_fp16.log"
$PY -c "import json,sys; s=json.load(open(sys.argv[1])); print({k: s[k] for k in ('status','precision','best_val_acc','tst_acc','skipped_steps','images_per_sec')})" "$WORK/runs/fp16/summary.json"
fi

if want 4; then
stage "4. --deterministic twice: bit-identical weights?"
for r in a b; do
    timeout 120 $PY -m resbench train --data_name Digits_x32 --resnet_depth 20 --optim_ni 300 --eval_every 300 \
        --device cuda --compile false --deterministic true --save "$WORK/runs/det_$r" >"$OUT/train_det_$r.log" 2>&1
    echo "run $r exit $?"
done
$PY - "$WORK/runs" <<'EOF'
import sys, torch
a, b = (torch.load(f"{sys.argv[1]}/det_{r}/last.pt", weights_only=True)["model"] for r in "ab")
diff = [k for k in a if not torch.equal(a[k], b[k])]
print("deterministic runs identical:", not diff, "| tensors differing:", diff[:5])
EOF
grep -i "warn" "$OUT/train_det_a.log" | sort | uniq -c | head -n 5
fi

if want 5; then
stage "5. resbench bench"
bench() {  # bench NAME FLAGS...: one configuration against the plain eager step, as JSON
    local name=$1; shift
    timeout 150 $PY -m resbench bench --device cuda --vs --json --warmup 10 "$@" >"$OUT/$name.json"
    echo "== $name (exit $?)"
    $PY -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['device'], '|', round(r['images_per_sec']), 'images/s', r['window_images_per_sec'], '|', round(r['ms_per_step'],2), 'ms/step |', round(r['minutes_per_48k_iters'],1), 'min/48k | plain eager', round(r['baseline']['images_per_sec']), '|', round(r['peak_memory_mb']), 'MiB |', round(100*r['fraction_of_peak'],1), '% of', round(r['matmul_peak_tflops']), 'TFLOP/s', r['matmul_peak_dtype'])" "$OUT/$name.json"
}
bench d20_fp32_compiled --resnet_depth 20 --iters 50 --windows 5 --compile true
bench d18_bf16_compiled --resnet_depth 18 --iters 20 --windows 3 --mixed_precision bf16 --compile true
fi

if want 6; then
stage "6. profile_step.py"
timeout 200 $PY benchmarks/profile_step.py --device cuda >"$OUT/profile_step.log" 2>&1
grep -v "^[WI][0-9]\|[Ww]arn" "$OUT/profile_step.log" | tail -n 45
fi

if want 7; then
stage "7. bench --grid seed (every row of the table)"
timeout 900 $PY -m resbench bench --grid seed --device cuda --warmup 10 --iters 30 --windows 2 2>&1 | tee "$OUT/grid_seed.md" | tail -n 30
fi

if want 8; then
stage "8. several depth-20 runs on one GPU: packed (--pack K) vs K processes at once"
for k in 2 4 8; do
    timeout 150 $PY -m resbench bench --device cuda --resnet_depth 20 --compile true --warmup 10 --iters 50 --windows 3 \
        --pack $k --json >"$OUT/pack_$k.json"
    $PY -c "import json,sys; r=json.load(open(sys.argv[1])); p=r['packed']; print('pack', p['runs'], '|', round(p['images_per_sec']), 'images/s together |', round(r['images_per_sec']), 'one run |', round(p['speedup_vs_one_run'], 2), 'x')" "$OUT/pack_$k.json"
    for i in $(seq $k); do
        timeout 150 $PY -m resbench bench --device cuda --resnet_depth 20 --compile true --warmup 10 --iters 200 \
            --windows 3 --json >"$OUT/procs_${k}_$i.json" &
    done
    wait
    $PY -c "import json,sys; rs=[json.load(open(f)) for f in sys.argv[1:]]; print($k, 'processes at once |', round(sum(r['images_per_sec'] for r in rs)), 'images/s together (each', [round(r['images_per_sec']) for r in rs], ')')" "$OUT"/procs_${k}_*.json
done
fi

if want 9; then
stage "9. ImageNet1k_x32: streamed batches vs the fp16 step (R18, 512 a GPU), then --bn_groups 2"
timeout 150 $PY benchmarks/streaming_throughput.py --device cuda --images 200000 --resnet_depth 18 \
    --batch_size 512 --mixed_precision fp16 --warmup 5 --iters 20 --windows 3 2>&1 | tee "$OUT/streaming.log" | tail -n 5
timeout 120 $PY -m resbench bench --device cuda --data_name ImageNet1k_x32 --resnet_depth 18 --batch_size 1024 \
    --bn_groups 2 --mixed_precision fp16 --compile false --warmup 5 --iters 10 --windows 2 2>&1 | tail -n 6
fi

stage "done"
rm -rf "$WORK"
