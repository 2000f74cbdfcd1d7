#!/usr/bin/env bash
# Few-shot text classification: SetFit (contrastive fine-tuning of the sentence encoder, then a
# logistic-regression head) against plain fine-tuning on the same 8 or 16 labelled texts per
# class, drawn from THUCNews-10k train per seed; accuracy on the full test set (1000 texts),
# m3e-small, 3 seeds. Writes bench/results/fewshot-*.json and prints a table.
#   bench/fewshot.sh                 # shots 8 16, seeds 42 43 44
#   SHOTS=8 SEEDS=42 bench/fewshot.sh
# Needs: target/release/zhiku (cargo build --release), the models (scripts/fetch-models.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATASETS:-../shared/datasets}/thucnews-10k"
zhiku="${ZHIKU:-target/release/zhiku}"
SEEDS="${SEEDS:-42 43 44}"
SHOTS="${SHOTS:-8 16}"
MODEL=.cache/models/m3e-small
mkdir -p bench/results runs/fewshot

for shots in $SHOTS; do
  for seed in $SEEDS; do
    dir=runs/fewshot/k$shots-s$seed
    mkdir -p "$dir"
    python3 - "$DATA/train.jsonl" "$dir/train.jsonl" "$seed" "$shots" <<'PY'
import json, random, sys, collections
src, dst, seed, k = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
by = collections.defaultdict(list)
for line in open(src, encoding="utf-8"):
    r = json.loads(line)
    by[r["label"]].append(r)
rng = random.Random(seed)
out = []
for label in sorted(by):
    out += rng.sample(by[label], k)
rng.shuffle(out)
with open(dst, "w", encoding="utf-8") as f:
    for r in out:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
PY
    common=(--model "$MODEL" --train "$dir/train.jsonl" --dev "$DATA/dev.jsonl" --test "$DATA/test.jsonl"
            --max-length 48 --seed "$seed" --quiet --json --overwrite)
    echo "== $shots per class, seed $seed: SetFit ==" >&2
    $zhiku train "${common[@]}" --output "$dir/setfit" --setfit --batch-size 16 > "bench/results/fewshot-setfit-k$shots-s$seed.json"
    echo "== $shots per class, seed $seed: plain fine-tuning ==" >&2
    $zhiku train "${common[@]}" --output "$dir/plain" --epochs 10 --batch-size 8 --lr 5e-5 --eval-steps 1000000 \
      > "bench/results/fewshot-plain-k$shots-s$seed.json"
  done
done

SEEDS="$SEEDS" SHOTS="$SHOTS" python3 - <<'PY'
import json, os, statistics
seeds, shots = os.environ["SEEDS"].split(), os.environ["SHOTS"].split()
print(f"THUCNews-10k (10 classes), m3e-small; test accuracy on 1000 texts over seeds {' '.join(seeds)}")
print(f"{'per class':>9} {'method':<18} {'mean':>7} {'std':>7}  per seed")
for k in shots:
    for method, label in (("setfit", "SetFit"), ("plain", "plain fine-tuning")):
        xs = [json.load(open(f"bench/results/fewshot-{method}-k{k}-s{s}.json"))["test"]["accuracy"] for s in seeds]
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        print(f"{k:>9} {label:<18} {statistics.mean(xs):>7.4f} {sd:>7.4f}  {' '.join(f'{x:.4f}' for x in xs)}")
PY
