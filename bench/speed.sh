#!/usr/bin/env bash
# Speed: `zhiku bench` on all-MiniLM-L6-v2 (train step 16x128, inference 32x128, fp32, CPU) with
# the PyTorch / ONNX Runtime reference (bench/torch_bench.py) run in the same session; prints the
# ratios and writes bench/results/speed.json. Run on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
mkdir -p bench/results
cargo build --release --locked -q
./scripts/fetch-models.sh >/dev/null
target/release/zhiku bench --model .cache/models/all-MiniLM-L6-v2 --steps "${STEPS:-5}" --batches "${BATCHES:-5}" \
  --reference "$PY bench/torch_bench.py --model .cache/models/all-MiniLM-L6-v2 --steps ${STEPS:-5} --batches ${BATCHES:-5} 2>/dev/null" \
  ${PEAK_GFLOPS:+--peak-gflops "$PEAK_GFLOPS"} "$@" | tee bench/results/speed.txt
