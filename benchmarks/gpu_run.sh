#!/usr/bin/env bash
# The prepared GPU run (issue 21, part 4): one script, a few minutes on one GPU, results under $OUT.
#   OUT=gpu_out bash benchmarks/gpu_run.sh            # OUT defaults to bench_out/gpu
# 1. speed.py --device cuda, fp32 and bf16, ours beside torchvision's R50-FPN Mask R-CNN (no mmdet venv
#    there): inference (1 image, batch 2) and training step (batch 2) at 800x1216 (mmdet's 1333x800
#    test scale of a 2:3 image); images/s = images per call / wall median.
# 2. the same with torch.compile of our backbone + FPN (compile time in "first call s").
# 3. data_speed.py: our training pipeline per worker (1x, 3x) and the training DataLoader with 0, 1, 2 and
#    nproc workers (pinned memory there; no mmdet venv on that machine, so ours only).
# 4. the test suite once with CUDA visible (the default suite; the CUDA-only checks run there).
# Each step has its own timeout, so one hang does not lose the others; logs per step.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out/gpu}
mkdir -p "$OUT"
PY=${PY:-python}
NPROC=$(nproc)
{ nvidia-smi; $PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"; } \
    > "$OUT/hardware.txt" 2>&1
timeout 240 $PY benchmarks/speed.py --device cuda --threads "$NPROC" --dtypes fp32 bf16 --cases infer1 infer2 train2 \
    --subjects ours tv_r50 --reps 5 --no-flops --out "$OUT/speed_eager.json" > "$OUT/speed_eager.log" 2>&1
echo "speed eager rc=$?" >> "$OUT/status.txt"
timeout 240 $PY benchmarks/speed.py --device cuda --threads "$NPROC" --dtypes bf16 --cases infer1 infer2 \
    --subjects ours tv_r50 --reps 5 --no-flops --compile default --out "$OUT/speed_compiled.json" \
    > "$OUT/speed_compiled.log" 2>&1
echo "speed compiled rc=$?" >> "$OUT/status.txt"
if [ -f benchmarks/data_speed.py ]; then
    timeout 120 $PY benchmarks/data_speed.py --workers 0 1 2 "$NPROC" --out "$OUT/data_speed.json" \
        > "$OUT/data_speed.log" 2>&1
    echo "data_speed rc=$?" >> "$OUT/status.txt"
fi
timeout 300 $PY -m pytest -q -x -p no:cacheprovider tests > "$OUT/tests_cuda.log" 2>&1
echo "tests rc=$?" >> "$OUT/status.txt"
cat "$OUT/status.txt"
