#!/usr/bin/env bash
# The main job on a fresh machine: fetch the default English encoder (all-MiniLM-L6-v2) and the
# BBC News demo data if missing, build zhiku, fine-tune a topic classifier (stratified
# train/dev/test split made automatically), evaluate it on the held-out test split, and label
# a few new texts. About 10 minutes on 2 CPU cores (build included); EPOCHS=3 for the full recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-models.sh >/dev/null
data="$(./scripts/fetch-demo-data.sh)"
cargo build --release --locked -q
zhiku=target/release/zhiku
out=runs/demo-bbc
$zhiku train --model .cache/models/all-MiniLM-L6-v2 --train "$data" --output "$out" --overwrite \
  --epochs "${EPOCHS:-1}" --batch-size 16 --lr 1e-4 --max-length 128
echo
echo "== test split =="
$zhiku eval --model "$out" --data "$out/splits/test.jsonl"
echo
echo "== predictions =="
$zhiku predict --model "$out" --top-k 2 \
  "The central bank raised interest rates again as inflation stayed high." \
  "The striker scored twice in the second half to win the cup final." \
  "The new smartphone chip doubles battery life, the company said." \
  "Parliament voted on the election reform bill late on Tuesday." \
  "The film won three awards at the festival, including best actress."
