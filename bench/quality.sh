#!/usr/bin/env bash
# Quality on the fixed splits of ../shared/datasets, zhiku and PyTorch + transformers side by side
# with the same recipe. Writes bench/results/quality-*.json and prints a table.
#   bench/quality.sh                 # both data sets
#   bench/quality.sh thucnews        # one
#   SEEDS="42 43 44" bench/quality.sh thucnews   # several seeds: mean and spread per engine
# Needs: target/release/zhiku (cargo build --release), the models (scripts/fetch-models.sh),
# and a Python with bench/requirements.txt (PYTHON=/path/to/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DATA="${DATASETS:-../shared/datasets}"
mkdir -p bench/results
zhiku="${ZHIKU:-target/release/zhiku}"

SEEDS="${SEEDS:-42}"

run() { # name model data-folder epochs batch lr max-length
  local name=$1 model=$2 data=$3 epochs=$4 bs=$5 lr=$6 len=$7
  for seed in $SEEDS; do
    local tag=$name; [ "$SEEDS" = 42 ] || tag=$name-s$seed
    echo "== $tag: zhiku ==" >&2
    local t0=$(date +%s)
    $zhiku train --model "$model" --train "$data/train.jsonl" --dev "$data/dev.jsonl" --test "$data/test.jsonl" \
      --output "runs/quality-$tag" --overwrite --epochs "$epochs" --batch-size "$bs" --lr "$lr" --max-length "$len" \
      --seed "$seed" --quiet --json > "bench/results/quality-$tag-zhiku.json"
    echo "zhiku took $(( $(date +%s) - t0 )) s" >&2
    echo "== $tag: pytorch ==" >&2
    "$PY" bench/torch_finetune.py --model "$model" --data "$data" --epochs "$epochs" --batch-size "$bs" --lr "$lr" \
      --max-length "$len" --seed "$seed" 2>/dev/null > "bench/results/quality-$tag-pytorch.json"
  done
}

which="${1:-all}"
if [ "$which" = all ] || [ "$which" = thucnews ]; then
  run thucnews .cache/models/m3e-small "$DATA/thucnews-10k" 2 32 1e-4 48
fi
if [ "$which" = all ] || [ "$which" = bbc ]; then
  run bbc .cache/models/all-MiniLM-L6-v2 "$DATA/bbc-news" 3 16 1e-4 128
fi
SEEDS="$SEEDS" "$PY" - <<'PY'
import json, os, statistics
seeds = os.environ["SEEDS"].split()
def fmt(xs):
    return f"{xs[0]:.4f}" if len(xs) == 1 else f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"
print(f"seeds: {' '.join(seeds)} (mean ± sample standard deviation when more than one)")
print(f"{'data set':<10} {'engine':<8} {'test acc':>17} {'macro-F1':>17} {'train s':>8} {'s/step':>7}")
for name in ("thucnews", "bbc"):
    for eng in ("zhiku", "pytorch"):
        acc, f1, secs, sps = [], [], [], []
        for seed in seeds:
            tag = name if seeds == ["42"] else f"{name}-s{seed}"
            p = f"bench/results/quality-{tag}-{eng}.json"
            if not os.path.exists(p) or os.path.getsize(p) == 0:
                continue
            r = json.load(open(p))
            acc.append(r["test"]["accuracy"]); f1.append(r["test"]["macro_f1"])
            if eng == "zhiku":
                secs.append(r["seconds"]); sps.append(r["seconds"] / max(r["steps"], 1))
            else:
                secs.append(r["train_seconds"]); sps.append(r["seconds_per_step"])
        if acc:
            print(f"{name:<10} {eng:<8} {fmt(acc):>17} {fmt(f1):>17} {statistics.mean(secs):>8.0f} {statistics.mean(sps):>7.2f}")
PY
