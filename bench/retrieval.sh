#!/usr/bin/env bash
# Retriever training on taobao-qa, zhiku against sentence-transformers in the same run.
# Fixed split: qa_pairs.jsonl pairs 0-3999 train (zhiku holds out a seeded 10% as dev),
# 4000-4999 test. The recipe on both sides: m3e-small, MultipleNegativesRankingLoss (scale 20)
# with in-batch negatives plus one BM25 hard negative per pair (mined by zhiku, written to
# runs/retrieval-zhiku/splits/train.jsonl, and given to sentence-transformers as they are),
# batch 32, 1 epoch, lr 2e-5, 10% warm-up then linear decay, weight decay 0.01, max length 64.
# Scores, all by `zhiku eval --task retrieval` (each model also scored by sentence-transformers
# itself on the FAQ test, which checks that each tool loads the other's folder):
#   FAQ matching: each test question ranks all 5000 answers (3304 distinct): recall@1/5/10, MRR;
#   response selection: response_selection_test.jsonl, 1 right reply among 10: R10@1, R10@2, MRR.
# Rows: BM25, base m3e-small, zhiku-tuned, ST-tuned, hybrid (zhiku-tuned + BM25, RRF 0.5), and
# the zhiku-tuned retriever's top 10 reordered by a cross-encoder (`zhiku train --task reranker`
# on the same training pairs, one BM25 negative each).
#   bench/retrieval.sh        (about 17 minutes on 2 cores; writes bench/results/retrieval.json)
#   SKIP_TRAIN=1 bench/retrieval.sh   (scores the models of the last run again)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${DATASETS:-../shared/datasets}/taobao-qa"
zhiku="${ZHIKU:-target/release/zhiku}"
base=.cache/models/m3e-small
work=.cache/bench/retrieval
mkdir -p "$work" bench/results
[ -d "$base" ] || ./scripts/fetch-models.sh >/dev/null
[ -x "$zhiku" ] || cargo build --release -q -p zhiku-cli
venv=bench/.st-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q sentence-transformers datasets accelerate
fi
"$venv/bin/python" -c 'import sentence_transformers, torch; print("sentence-transformers", sentence_transformers.__version__, "torch", torch.__version__)' >&2

python3 - "$DATA/qa_pairs.jsonl" "$work" <<'PY'
import json, sys
pairs = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
def write(name, rows, key):
    with open(f"{sys.argv[2]}/{name}", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(key(r), ensure_ascii=False) + "\n")
write("train.jsonl", pairs[:4000], lambda p: {"query": p["question"], "positive": p["answer"]})
write("test.jsonl", pairs[4000:], lambda p: {"query": p["question"], "positive": p["answer"]})
write("corpus.jsonl", pairs, lambda p: {"text": p["answer"]})
PY

if [ -z "${SKIP_TRAIN:-}" ]; then
recipe=(--epochs 1 --batch-size 32 --max-length 64 --lr 2e-5 --weight-decay 0.01 --warmup-ratio 0.1 --seed 42)
echo "== zhiku train --task retrieval ==" >&2
/usr/bin/time -f "%e %M" -o "$work/zhiku.time" "$zhiku" train --task retrieval --model "$base" --train "$work/train.jsonl" \
  --test "$work/test.jsonl" --corpus "$work/corpus.jsonl" --hard-negatives 1 --output runs/retrieval-zhiku --overwrite \
  "${recipe[@]}" --quiet --json > "$work/zhiku.json"
echo "== sentence-transformers, same pairs and negatives ==" >&2
/usr/bin/time -f "%e %M" -o "$work/st.time" "$venv/bin/python" bench/st_retrieval.py "$base" runs/retrieval-zhiku/splits/train.jsonl \
  runs/retrieval-st --batch 32 --epochs 1 --lr 2e-5 --max-length 64 --weight-decay 0.01 --warmup-ratio 0.1 --seed 42 > "$work/st.json" 2> "$work/st.err"

echo "== zhiku train --task reranker ==" >&2
/usr/bin/time -f "%e %M" -o "$work/reranker.time" "$zhiku" train --task reranker --model "$base" --train "$work/train.jsonl" \
  --hard-negatives 1 --output runs/retrieval-reranker --overwrite --epochs 1 --batch-size 32 --max-length 128 --lr 2e-5 \
  --seed 42 --quiet --json > "$work/reranker.json"
fi

score() { # name mode model data [corpus]
  local extra=(); [ -n "${5:-}" ] && extra=(--corpus "$5")
  local m=(); [ "$2" != bm25 ] && m=(--model "$3")
  [ "$1" = rerank ] && extra+=(--rerank runs/retrieval-reranker --rerank-top 10)
  "$zhiku" eval --task retrieval --mode "$2" "${m[@]}" --data "$4" "${extra[@]}" --json
}
{
  for row in "bm25 bm25 -" "base dense $base" "zhiku dense runs/retrieval-zhiku" "st dense runs/retrieval-st" "hybrid hybrid runs/retrieval-zhiku" "rerank dense runs/retrieval-zhiku"; do
    set -- $row
    echo "{\"row\": \"$1\", \"faq\": $(score "$1" "$2" "$3" "$work/test.jsonl" "$work/corpus.jsonl"), \"response_selection\": $(score "$1" "$2" "$3" "$DATA/response_selection_test.jsonl")}"
  done
  for m in "$base" runs/retrieval-zhiku runs/retrieval-st; do
    echo "{\"st_check\": \"$m\", \"faq\": $("$venv/bin/python" bench/st_eval_retrieval.py "$m" "$work/test.jsonl" "$work/corpus.jsonl" 2>/dev/null)}"
  done
} > "$work/scores.jsonl"

python3 - "$work" <<'PY'
import json, sys, datetime
w = sys.argv[1]
rows = [json.loads(l) for l in open(f"{w}/scores.jsonl")]
t = {k: open(f"{w}/{k}.time").read().split() for k in ("zhiku", "st", "reranker")}
zj, sj = json.load(open(f"{w}/zhiku.json")), json.loads(open(f"{w}/st.json").read().strip().splitlines()[-1])
names = {"bm25": "BM25", "base": "m3e-small (base)", "zhiku": "m3e-small tuned by zhiku", "st": "m3e-small tuned by sentence-transformers", "hybrid": "hybrid: zhiku-tuned + BM25 (RRF)", "rerank": "zhiku-tuned, top 10 reranked by the cross-encoder"}
print(f"taobao-qa retrieval, {datetime.date.today()}\n")
print("| retriever | FAQ R@1 | R@5 | R@10 | MRR | resp. sel. R10@1 | R10@2 | MRR |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    if "row" not in r: continue
    f, s = r["faq"], r["response_selection"]
    print(f"| {names[r['row']]} | {f['recall@1']:.3f} | {f['recall@5']:.3f} | {f['recall@10']:.3f} | {f['mrr']:.4f} | {s['r@1']:.3f} | {s['r@2']:.3f} | {s['mrr']:.4f} |")
print()
for r in rows:
    if "st_check" in r:
        print(f"sentence-transformers scoring {r['st_check']}: FAQ R@10 {r['faq']['recall@10']:.3f} MRR {r['faq']['mrr']:.4f}")
print(f"\ntraining: zhiku {float(t['zhiku'][0]):.0f} s wall ({zj['seconds']:.0f} s in the run, peak RSS {int(t['zhiku'][1])//1024} MB); "
      f"sentence-transformers {float(t['st'][0]):.0f} s wall ({sj['seconds']:.0f} s in trainer.train, peak RSS {int(t['st'][1])//1024} MB); "
      f"{sj['pairs']} pairs, {sj['negatives_per_pair']} hard negative each")
json.dump({"rows": rows, "zhiku": zj, "st": sj, "times": t}, open("bench/results/retrieval.json", "w"), indent=1)
PY
