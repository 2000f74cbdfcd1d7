#!/usr/bin/env bash
# Full fine-tuning against LoRA, bottleneck adapters and prefix tuning on the fixed splits of
# ../shared/datasets, same data, epochs, batch, length and seed; each method at its usual
# learning rate (zhiku train's default for it). Writes bench/results/peft-*.json and prints a
# table: test accuracy, trainable parameters, checkpoint size, seconds per step (median of the
# step log, so dev evaluation is not counted), peak memory (maximum resident set).
#   bench/peft.sh               # both data sets
#   bench/peft.sh bbc           # one
#   METHODS="full lora" bench/peft.sh thucnews
# Needs: target/release/zhiku (cargo build --release), the models (scripts/fetch-models.sh),
# GNU time (/usr/bin/time, Debian package "time") for peak memory.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATASETS:-../shared/datasets}"
zhiku="${ZHIKU:-target/release/zhiku}"
METHODS="${METHODS:-full lora adapter prefix}"
mkdir -p bench/results

run() { # name model data-folder epochs batch max-length
  local name=$1 model=$2 data=$3 epochs=$4 bs=$5 len=$6
  for method in $METHODS; do
    local peft=(); [ "$method" = full ] && peft=(--lr 1e-4) || peft=(--peft "$method")
    echo "== $name: $method ==" >&2
    /usr/bin/time -f "%M" -o "bench/results/peft-$name-$method.rss" \
      $zhiku train --model "$model" --train "$data/train.jsonl" --dev "$data/dev.jsonl" --test "$data/test.jsonl" \
        --output "runs/peft-$name-$method" --overwrite --epochs "$epochs" --batch-size "$bs" --max-length "$len" \
        --seed 42 --quiet --json "${peft[@]}" > "bench/results/peft-$name-$method.json"
  done
}

which="${1:-all}"
# The recipes of bench/quality.sh (full fine-tuning there uses lr 1e-4 too).
if [ "$which" = all ] || [ "$which" = thucnews ]; then
  run thucnews .cache/models/m3e-small "$DATA/thucnews-10k" 2 32 48
fi
if [ "$which" = all ] || [ "$which" = bbc ]; then
  run bbc .cache/models/all-MiniLM-L6-v2 "$DATA/bbc-news" 3 16 128
fi

python3 - <<'PY'
import json, os, statistics
def step_seconds(out):
    # Median time between consecutive steps in the step log: training alone, not dev evaluation.
    t = [json.loads(l)["elapsed_s"] for l in open(os.path.join(out, "train_log.jsonl")) if l.startswith('{"step"')]
    return statistics.median(b - a for a, b in zip(t, t[1:]))
print(f"{'data set':<9} {'method':<8} {'test acc':>8} {'macro-F1':>8} {'trainable':>16} {'checkpoint':>11} {'s/step':>7} {'peak RSS':>9}")
for name in ("thucnews", "bbc"):
    for method in ("full", "lora", "adapter", "prefix"):
        p = f"bench/results/peft-{name}-{method}.json"
        if not os.path.exists(p) or os.path.getsize(p) == 0:
            continue
        r = json.load(open(p))
        out = f"runs/peft-{name}-{method}"
        weights = os.path.join(out, "model.safetensors" if method == "full" else "adapter_model.safetensors")
        size = os.path.getsize(weights) / 2**20
        rss = int(open(p.replace(".json", ".rss")).read().split()[-1]) / 1024
        share = 100 * r["trainable_params"] / r["total_params"]
        print(f"{name:<9} {method:<8} {r['test']['accuracy']:>8.4f} {r['test']['macro_f1']:>8.4f} "
              f"{r['trainable_params'] / 1e6:>6.2f}M ({share:>5.2f}%) {size:>8.2f} MiB {step_seconds(out):>7.2f} {rss:>5.0f} MiB")
PY
