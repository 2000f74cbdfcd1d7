#!/usr/bin/env bash
# Recommendation on MovieLens-100K (issue 15), side by side with the `implicit` package:
#   1. the 75/25 per-user random split of Microsoft Recommenders' MovieLens table (seed 42), every
#      zhiku algorithm tuned on a validation split carved from the training file, scored on the
#      test file (NDCG/P/R/MAP@10 as Recommenders defines them);
#   2. implicit's ALS and BPR (pip, 2 threads) trained on the same training file with the
#      hyperparameters zhiku's tuning chose, and with implicit's defaults, each beside zhiku
#      trained with the same ones (no tuning), fit times measured in the same run; implicit's
#      factors are written as zhiku model folders (bench/implicit_ref.py) so the same evaluator
#      scores both;
#   3. the cold-items split (a quarter of the interactions, on items with none in training):
#      ALS (behaviour only), content (item texts, all-MiniLM-L6-v2) and the hybrid, tuned on a
#      random or a cold-items validation split.
# Writes bench/results/recommend-ml100k.json and prints the tables.
#   bench/recommend.sh
set -euo pipefail
cd "$(dirname "$0")/.."
data=../shared/datasets/ml-100k
work=.cache/bench/recommend
venv=bench/.rec-venv
encoder=.cache/models/all-MiniLM-L6-v2
mkdir -p "$work" bench/results
[ -d "$encoder" ] || ./scripts/fetch-models.sh >/dev/null
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import implicit" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q implicit==0.7.3 numpy scipy
fi
cargo build --release -q -p zhiku-cli
Z="${ZHIKU:-target/release/zhiku}"
export OPENBLAS_NUM_THREADS=1  # implicit's advice: its own threads, not BLAS's
rows="$work/rows.jsonl"
: > "$rows"
# row NAME SPLIT MODEL_DIR TRAIN_JSON: evaluates a model and appends one JSON row.
row() {
  local eval
  eval=$($Z recommend eval --model "$3" --test "$work/$2/test.tsv" --json)
  python3 - "$1" "$2" "$4" "$eval" >> "$rows" <<'PY'
import json, sys
name, split, train, ev = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
print(json.dumps({"name": name, "split": split, "train": train, "eval": ev}))
PY
}
for protocol in random cold-items; do
  [ -f "$work/$protocol/test.tsv" ] || $Z recommend split --interactions "$data/ratings.tsv" --protocol "$protocol" --seed 42 --output "$work/$protocol" >/dev/null
done
texts=(--items "$data/items.tsv" --encoder "$encoder")
fit_seconds() { python3 -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'setting': d['setting'], 'seconds': d['seconds'], 'fit_seconds': d['training']['fit_seconds'], 'params': d['params']}))"; }

# 1. Every algorithm, tuned, on the random split.
for algo in popularity itemknn bpr als ease content hybrid; do
  case "$algo" in content|hybrid) extra=("${texts[@]}") ;; *) extra=() ;; esac
  t=$($Z recommend train --interactions "$work/random/train.tsv" --algorithm "$algo" "${extra[@]}" --output "$work/models/random-$algo" --quiet --json | fit_seconds)
  row "zhiku $algo" random "$work/models/random-$algo" "$t"
done

# 2. implicit beside zhiku with the same hyperparameters: zhiku's tuned ones, then implicit's defaults.
params() { python3 -c "import json; p=json.load(open('$work/models/random-$1/recommender.json'))['params']['$1']; print(' '.join(str(p[k]) for k in '$2'.split()))"; }
read -r f r a it <<< "$(params als 'factors regularization alpha iterations')"
als_sets=("tuned $f $r $a $it" "defaults 100 0.01 1.0 15")
read -r f lr r it <<< "$(params bpr 'factors learning_rate regularization iterations')"
bpr_sets=("tuned $f $lr $r $it" "defaults 100 0.01 0.01 100")
for s in "${als_sets[@]}"; do
  read -r tag f r a it <<< "$s"
  t=$($Z recommend train --interactions "$work/random/train.tsv" --algorithm als --factors "$f" --regularization "$r" --alpha "$a" --iterations "$it" --no-tune --output "$work/models/als-$tag" --quiet --json | fit_seconds)
  row "zhiku als ($tag setting)" random "$work/models/als-$tag" "$t"
  t=$("$venv/bin/python" bench/implicit_ref.py --train "$work/random/train.tsv" --algorithm als --factors "$f" --regularization "$r" --alpha "$a" --iterations "$it" --seed 42 --output "$work/models/implicit-als-$tag" 2>/dev/null)
  row "implicit als ($tag setting)" random "$work/models/implicit-als-$tag" "$t"
done
for s in "${bpr_sets[@]}"; do
  read -r tag f lr r it <<< "$s"
  t=$($Z recommend train --interactions "$work/random/train.tsv" --algorithm bpr --factors "$f" --learning-rate "$lr" --regularization "$r" --iterations "$it" --no-tune --output "$work/models/bpr-$tag" --quiet --json | fit_seconds)
  row "zhiku bpr ($tag setting)" random "$work/models/bpr-$tag" "$t"
  t=$("$venv/bin/python" bench/implicit_ref.py --train "$work/random/train.tsv" --algorithm bpr --factors "$f" --learning-rate "$lr" --regularization "$r" --iterations "$it" --seed 42 --output "$work/models/implicit-bpr-$tag" 2>/dev/null)
  row "implicit bpr ($tag setting)" random "$work/models/implicit-bpr-$tag" "$t"
done

# 2b. Seed spread at the tuned settings (different random starts and samples, same data).
read -r f r a it <<< "$(params als 'factors regularization alpha iterations')"
read -r bf blr br bit <<< "$(params bpr 'factors learning_rate regularization iterations')"
for seed in 1 2 3; do
  t=$($Z recommend train --interactions "$work/random/train.tsv" --algorithm als --factors "$f" --regularization "$r" --alpha "$a" --iterations "$it" --no-tune --seed "$seed" --output "$work/models/als-s$seed" --quiet --json | fit_seconds)
  row "zhiku als (tuned setting, seed $seed)" random "$work/models/als-s$seed" "$t"
  t=$("$venv/bin/python" bench/implicit_ref.py --train "$work/random/train.tsv" --algorithm als --factors "$f" --regularization "$r" --alpha "$a" --iterations "$it" --seed "$seed" --output "$work/models/implicit-als-s$seed" 2>/dev/null)
  row "implicit als (tuned setting, seed $seed)" random "$work/models/implicit-als-s$seed" "$t"
  t=$($Z recommend train --interactions "$work/random/train.tsv" --algorithm bpr --factors "$bf" --learning-rate "$blr" --regularization "$br" --iterations "$bit" --no-tune --seed "$seed" --output "$work/models/bpr-s$seed" --quiet --json | fit_seconds)
  row "zhiku bpr (tuned setting, seed $seed)" random "$work/models/bpr-s$seed" "$t"
  t=$("$venv/bin/python" bench/implicit_ref.py --train "$work/random/train.tsv" --algorithm bpr --factors "$bf" --learning-rate "$blr" --regularization "$br" --iterations "$bit" --seed "$seed" --output "$work/models/implicit-bpr-s$seed" 2>/dev/null)
  row "implicit bpr (tuned setting, seed $seed)" random "$work/models/implicit-bpr-s$seed" "$t"
done

# 3. New items: the cold-items split.
t=$($Z recommend train --interactions "$work/cold-items/train.tsv" --algorithm als --output "$work/models/cold-als" --quiet --json | fit_seconds)
row "zhiku als" cold-items "$work/models/cold-als" "$t"
t=$($Z recommend train --interactions "$work/cold-items/train.tsv" --algorithm content "${texts[@]}" --output "$work/models/cold-content" --quiet --json | fit_seconds)
row "zhiku content" cold-items "$work/models/cold-content" "$t"
for v in random cold-items; do
  t=$($Z recommend train --interactions "$work/cold-items/train.tsv" --algorithm hybrid "${texts[@]}" --validation-protocol "$v" --output "$work/models/cold-hybrid-$v" --quiet --json | fit_seconds)
  row "zhiku hybrid (tuned on a $v validation split)" cold-items "$work/models/cold-hybrid-$v" "$t"
done

python3 - "$rows" <<'PY'
import datetime, json, platform, subprocess, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
out = {"date": datetime.date.today().isoformat(), "cpu": cpu, "threads": 2, "command": "bench/recommend.sh",
       "published_ml100k_ndcg@10": {"BiVAE": 0.475, "BPR": 0.442, "LightGCN": 0.420, "SAR": 0.382}, "rows": rows}
json.dump(out, open("bench/results/recommend-ml100k.json.tmp", "w"), indent=1)
import os; os.replace("bench/results/recommend-ml100k.json.tmp", "bench/results/recommend-ml100k.json")
print(f"{'row':52} {'split':10} {'NDCG@10':>8} {'P@10':>7} {'R@10':>7} {'MAP@10':>7} {'cov':>6} {'fit s':>7}")
for r in rows:
    e, t = r["eval"], r["train"]
    print(f"{r['name']:52} {r['split']:10} {e['ndcg@10']:8.4f} {e['precision@10']:7.4f} {e['recall@10']:7.4f} {e['map@10']:7.4f} {e['coverage']:6.3f} {t.get('fit_seconds', 0):7.2f}")
# Mean and spread over the seeds 42 (the tuned-setting row), 1, 2, 3.
import statistics
print()
for who in ("zhiku", "implicit"):
    for algo in ("als", "bpr"):
        pick = [r for r in rows if r["name"] == f"{who} {algo} (tuned setting)" or r["name"].startswith(f"{who} {algo} (tuned setting, seed")]
        nd = [r["eval"]["ndcg@10"] for r in pick]
        fs = [r["train"]["fit_seconds"] for r in pick]
        print(f"{who} {algo} at the tuned setting, {len(nd)} seeds: NDCG@10 {statistics.mean(nd):.4f} ± {statistics.stdev(nd):.4f}, fit {statistics.mean(fs):.2f} s")
PY
