#!/usr/bin/env bash
# Augmentation by the generator against EDA, with little data: 5% of THUCNews-10k train (the
# stratified 400 texts bench/robust.sh draws with seed 42), m3e-small fine-tuned as there
# (5 epochs, batch 16, lr 1e-4, 48 tokens), test accuracy on the full test set (1000 texts), mean
# and spread over training seeds 42 43 44. All rows train on the same 400 texts, so the methods
# are compared on paired data; the spread is the training seed's.
#   bench/augment.sh
#   SEEDS=42 COPIES=2 bench/augment.sh
#   LLM=path/to/other-chat-model.gguf bench/augment.sh
# Rows (each augmented row adds COPIES variants per text, default 1, written by `zhiku augment`
# and read by `zhiku train`): baseline; EDA; paraphrase; back-translation (zh->en->zh). Writes
# bench/results/augment-*.json, 20 samples per method to bench/results/augment-samples.md, and
# prints a table. Finished steps are skipped on a rerun (delete runs/augment to start again).
# Needs: target/release/zhiku (cargo build --release), the models (scripts/fetch-models.sh,
# scripts/fetch-llms.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATASETS:-../shared/datasets}/thucnews-10k"
zhiku="${ZHIKU:-target/release/zhiku}"
SEEDS="${SEEDS:-42 43 44}"
MODEL=.cache/models/m3e-small
LLM="${LLM:-.cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}"
COPIES="${COPIES:-1}"
SAMPLE_SEED="${SAMPLE_SEED:-42}"
mkdir -p bench/results runs/augment

dir=runs/augment/sample$SAMPLE_SEED-copies$COPIES
mkdir -p "$dir"
[ -s "$dir/train.jsonl" ] || python3 bench/thucnews_sample.py "$DATA/train.jsonl" "$dir/train.jsonl" "$SAMPLE_SEED"
for method in eda paraphrase back-translation; do
  if [ ! -s "$dir/train-$method.jsonl" ]; then
    echo "== augment by $method ==" >&2
    model=(); [ "$method" = eda ] || model=(--model "$LLM")
    $zhiku augment "$dir/train.jsonl" --method "$method" --copies "$COPIES" "${model[@]}" --seed "$SAMPLE_SEED" \
      --output "$dir/train-$method.jsonl" --json > "bench/results/augment-generate-$method.json"
  fi
done
for seed in $SEEDS; do
  common=(--model "$MODEL" --dev "$DATA/dev.jsonl" --test "$DATA/test.jsonl"
          --epochs 5 --batch-size 16 --lr 1e-4 --max-length 48 --eval-steps 1000000 --seed "$seed" --quiet --json --overwrite)
  train() { # name train-file
    local out="bench/results/augment-$1-s$seed.json"
    [ -s "$out" ] && return
    echo "== seed $seed: train $1 ==" >&2
    $zhiku train "${common[@]}" --train "$2" --output "$dir/$1-s$seed" > "$out"
  }
  train baseline "$dir/train.jsonl"
  for method in eda paraphrase back-translation; do
    train "$method" "$dir/train-$method.jsonl"
  done
done

SEEDS="$SEEDS" LLM="$LLM" COPIES="$COPIES" python3 - <<'PY'
import json, os, sys
sys.path.insert(0, "bench")
from seed_table import table
seeds = os.environ["SEEDS"].split()
print(f"THUCNews-10k, 5% of train (400 texts) + {os.environ['COPIES']} variant(s) each, m3e-small; test accuracy over training seeds {' '.join(seeds)}")
print(f"generator: {os.path.basename(os.environ['LLM'])}")
def generation(name):
    if name == "baseline":
        return ""
    g = json.load(open(f"bench/results/augment-generate-{name}.json"))
    return f" | {g['variants']}/{g['wanted']}, {g['rejected_total']} {json.dumps({k: v for k, v in g['rejected'].items() if v})}, {g['seconds']:.0f} s"
table("augment", seeds, ["baseline", "eda", "paraphrase", "back-translation"], "augmentation", generation, "  | variants kept/wanted, outputs rejected, seconds to write")
PY

# 20 samples per method: the first 20 training texts and their variants.
DIR="$dir" python3 - <<'PY'
import json, os
d = os.environ["DIR"]
originals = [json.loads(l) for l in open(f"{d}/train.jsonl", encoding="utf-8")][:20]
out = ["# Augmentation samples: the first 20 training texts and their variants\n",
       f"Written by `bench/augment.sh` ({d}); the variants are what `zhiku train` read.\n"]
for method in ["eda", "paraphrase", "back-translation"]:
    rows = [json.loads(l) for l in open(f"{d}/train-{method}.jsonl", encoding="utf-8")]
    out.append(f"\n## {method}\n\n| original | variants |\n|---|---|")
    by, line_of = {}, {}
    for r in rows:
        if "augmented" in r:
            by.setdefault(r["source_line"], []).append(r["text"])
        else:
            line_of[r["text"]] = r["source_line"]
    for o in originals:
        v = by.get(line_of.get(o["text"]), [])
        out.append(f"| {o['text']} | {' <br> '.join(v) if v else '(none kept)'} |")
open("bench/results/augment-samples.md", "w", encoding="utf-8").write("\n".join(out) + "\n")
PY
echo "samples: bench/results/augment-samples.md" >&2
