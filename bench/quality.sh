#!/usr/bin/env bash
# Quality on the fixed splits of ../shared/datasets, zhiku and PyTorch + transformers side by side
# with the same recipe. Writes bench/results/quality-*.json and prints a table.
#   bench/quality.sh                 # both data sets
#   bench/quality.sh thucnews        # one
# Needs: target/release/zhiku (cargo build --release), the models (scripts/fetch-models.sh),
# and a Python with bench/requirements.txt (PYTHON=/path/to/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DATA="${DATASETS:-../shared/datasets}"
mkdir -p bench/results
zhiku=target/release/zhiku

run() { # name model data-folder epochs batch lr max-length
  local name=$1 model=$2 data=$3 epochs=$4 bs=$5 lr=$6 len=$7
  local out=runs/quality-$name
  echo "== $name: zhiku ==" >&2
  local t0=$(date +%s)
  $zhiku train --model "$model" --train "$data/train.jsonl" --dev "$data/dev.jsonl" --test "$data/test.jsonl" \
    --output "$out" --overwrite --epochs "$epochs" --batch-size "$bs" --lr "$lr" --max-length "$len" --quiet --json \
    > bench/results/quality-$name-zhiku.json
  echo "zhiku took $(( $(date +%s) - t0 )) s" >&2
  echo "== $name: pytorch ==" >&2
  "$PY" bench/torch_finetune.py --model "$model" --data "$data" --epochs "$epochs" --batch-size "$bs" --lr "$lr" \
    --max-length "$len" 2>/dev/null > bench/results/quality-$name-pytorch.json
}

which="${1:-all}"
if [ "$which" = all ] || [ "$which" = thucnews ]; then
  run thucnews .cache/models/m3e-small "$DATA/thucnews-10k" 2 32 1e-4 48
fi
if [ "$which" = all ] || [ "$which" = bbc ]; then
  run bbc .cache/models/all-MiniLM-L6-v2 "$DATA/bbc-news" 3 16 1e-4 128
fi
"$PY" - <<'PY'
import json, glob, os
print(f"{'data set':<10} {'engine':<8} {'test acc':>8} {'macro-F1':>8} {'train s':>8} {'s/step':>7}")
for name in ("thucnews", "bbc"):
    for eng in ("zhiku", "pytorch"):
        p = f"bench/results/quality-{name}-{eng}.json"
        if not os.path.exists(p) or os.path.getsize(p) == 0:
            continue
        r = json.load(open(p))
        if eng == "zhiku":
            t = r["test"]; secs = r["seconds"]; sps = secs / max(r["steps"], 1)
        else:
            t = r["test"]; secs = r["train_seconds"]; sps = r["seconds_per_step"]
        print(f"{name:<10} {eng:<8} {t['accuracy']:>8.4f} {t['macro_f1']:>8.4f} {secs:>8.0f} {sps:>7.2f}")
PY
