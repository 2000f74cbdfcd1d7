#!/usr/bin/env bash
# FAQ matching on taobao-qa (Chinese customer service): every held-out question (pairs
# 4000-4999 of qa_pairs.jsonl, a fixed split) against all 5000 answers, by BM25, dense
# (m3e-small) and hybrid retrieval from a zhiku library. A hit is any answer whose text equals
# the question's own answer (short answers repeat). Prints recall@1/5/10 and MRR per mode.
#   DATA=../shared/datasets/taobao-qa ENCODER=.cache/models/m3e-small bench/faq_matching.sh
set -euo pipefail
cd "$(dirname "$0")/.."
data="${DATA:-../shared/datasets/taobao-qa}"
encoder="${ENCODER:-.cache/models/m3e-small}"
work=".cache/bench/faq"
mkdir -p "$work"
[ -d "$encoder" ] || ./scripts/fetch-models.sh >/dev/null
cargo build --release -q -p zhiku-cli
python3 - "$data/qa_pairs.jsonl" "$work" <<'PY'
import json, sys
pairs = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
out = sys.argv[2]
by_answer = {}
for i, p in enumerate(pairs):
    by_answer.setdefault(p["answer"], []).append(f"a{i}")
with open(f"{out}/answers.jsonl", "w", encoding="utf-8") as f:
    for i, p in enumerate(pairs):
        f.write(json.dumps({"id": f"a{i}", "text": p["answer"]}, ensure_ascii=False) + "\n")
with open(f"{out}/queries.jsonl", "w", encoding="utf-8") as f:
    for p in pairs[4000:5000]:
        f.write(json.dumps({"query": p["question"], "relevant": by_answer[p["answer"]]}, ensure_ascii=False) + "\n")
PY
rm -rf "$work/library"
/usr/bin/time -f "ingestion: %e s, %M KB peak" ./target/release/zhiku library add --library "$work/library" --encoder "$encoder" "$work/answers.jsonl"
for mode in bm25 dense hybrid; do
  ./target/release/zhiku library eval --library "$work/library" --queries "$work/queries.jsonl" --mode "$mode" --json
done
