#!/usr/bin/env bash
# What each robustness technique buys with little data: 5% of THUCNews-10k train (a stratified
# sample per seed, 400 texts), m3e-small, full fine-tuning, test accuracy on the full test set,
# mean and spread over 3 seeds. Writes bench/results/robust-*.json and prints a table.
#   bench/robust.sh                  # seeds 42 43 44
#   SEEDS=42 bench/robust.sh
# Rows: baseline; label smoothing 0.1; dropout 0.2; FGM (epsilon 1.0); R-Drop (alpha 1.0);
# EDA augmentation (2 copies); an ensemble of the baseline, label-smoothing and dropout models
# (no extra training); checkpoint averaging (mean of the baseline's epoch 3-5 weights).
# Needs: target/release/zhiku (cargo build --release), the models (scripts/fetch-models.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATASETS:-../shared/datasets}/thucnews-10k"
zhiku="${ZHIKU:-target/release/zhiku}"
SEEDS="${SEEDS:-42 43 44}"
MODEL=.cache/models/m3e-small
mkdir -p bench/results runs/robust

for seed in $SEEDS; do
  dir=runs/robust/s$seed
  mkdir -p "$dir"
  # A stratified 5% sample of train, drawn with this seed.
  python3 bench/thucnews_sample.py "$DATA/train.jsonl" "$dir/train.jsonl" "$seed"
  common=(--model "$MODEL" --train "$dir/train.jsonl" --dev "$DATA/dev.jsonl" --test "$DATA/test.jsonl"
          --epochs 5 --batch-size 16 --lr 1e-4 --max-length 48 --eval-steps 1000000 --seed "$seed" --quiet --json --overwrite)
  train() { # name flags...
    local name=$1; shift
    echo "== seed $seed: $name ==" >&2
    $zhiku train "${common[@]}" --output "$dir/$name" "$@" > "bench/results/robust-$name-s$seed.json"
  }
  train baseline --save-every-epoch
  train label-smoothing --label-smoothing 0.1
  train dropout-0.2 --dropout 0.2
  train fgm --fgm-epsilon 1.0
  train r-drop --rdrop-alpha 1.0
  train augment --augment 2
  echo "== seed $seed: ensemble, checkpoint averaging ==" >&2
  $zhiku eval --model "$dir/baseline" --model "$dir/label-smoothing" --model "$dir/dropout-0.2" --data "$DATA/test.jsonl" --json \
    > "bench/results/robust-ensemble-s$seed.json"
  $zhiku average --model "$dir/baseline/epoch-3" --model "$dir/baseline/epoch-4" --model "$dir/baseline/epoch-5" --output "$dir/averaged" --overwrite >&2
  $zhiku eval --model "$dir/averaged" --data "$DATA/test.jsonl" --json > "bench/results/robust-checkpoint-averaging-s$seed.json"
done

echo "THUCNews-10k, 5% of train (400 texts), m3e-small; test accuracy over seeds $SEEDS"
python3 bench/seed_table.py robust "$SEEDS" baseline label-smoothing dropout-0.2 fgm r-drop augment ensemble checkpoint-averaging --label technique
