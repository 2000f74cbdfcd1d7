#!/usr/bin/env bash
# The content library at scale, against FAISS in the same run. N synthetic chunks (three real
# news sentences each; vectors from all-MiniLM-L6-v2, see crates/zhiku-library/examples/scale.rs)
# go through `Library` (SQLite + tantivy + HNSW): ingestion chunks/s with the vectors given and,
# on a 3000-chunk sample, with embedding; query p50/p99 for BM25, dense (query embedding
# included) and hybrid; the vector index alone and its recall@10 against exact search; memory
# and disk. FAISS's IndexHNSWFlat (same M, efConstruction, efSearch) on the same vectors, one
# query at a time on one thread as a server answers them (its index is built on 2 threads;
# zhiku's is built on 1, while it also stores the chunks and indexes their text).
#   bench/library_scale.sh 100000     (about 10 minutes)   bench/library_scale.sh 1000000
#   SCALE_ARGS="--pool 10000 --sample 500" bench/library_scale.sh 1000000   (a smaller sentence pool and embedding sample)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-100000}"
DATA="${DATASETS:-../shared/datasets}"
encoder=.cache/models/all-MiniLM-L6-v2
out=".cache/bench/scale-$n"
[ -d "$encoder" ] || ./scripts/fetch-models.sh >/dev/null
venv=bench/.faiss-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q faiss-cpu numpy
fi
cargo build --release -q -p zhiku-library --example scale
mkdir -p "$out" bench/results
/usr/bin/time -f "%e %M" -o "$out/zhiku.time" target/release/examples/scale --encoder "$encoder" \
  --articles "$DATA/news-articles/articles.jsonl" --chunks "$n" --out "$out" ${SCALE_ARGS:-} > /dev/null
"$venv/bin/python" bench/faiss_scale.py "$out" > "$out/faiss.json"
python3 - "$out" "$n" <<'PY'
import json, sys, datetime
out = sys.argv[1]
z, f = json.load(open(f"{out}/zhiku.json")), json.load(open(f"{out}/faiss.json"))
peak = int(open(f"{out}/zhiku.time").read().split()[1]) / 1024
L = z["latency"]
print(f"library at {z['chunks']:,} chunks ({z['dimensions']} dims), {datetime.date.today()}\n")
print("| | zhiku | FAISS HNSW |")
print("|---|---|---|")
print(f"| ingestion, vectors given | {z['ingest_chunks_per_s_vectors_given']:,.0f} chunks/s (SQLite + tantivy + HNSW) | {f['vectors_per_s']:,.0f} vectors/s ({f['build_threads']} threads, index only) |")
print(f"| ingestion with embedding (MiniLM, {z['embedding_sample']} chunks) | {z['ingest_chunks_per_s_with_embedding']:,.0f} chunks/s | - |")
print(f"| vector search, p50 / p99 | {L['hnsw_only']['p50_ms']:.2f} / {L['hnsw_only']['p99_ms']:.2f} ms | {f['p50_ms']:.2f} / {f['p99_ms']:.2f} ms |")
print(f"| recall@10 against exact (efSearch {z['ef_search']}) | {z['hnsw_recall_at_10']:.3f} | {f['recall_at_10']:.3f} |")
print(f"| BM25 search, p50 / p99 | {L['bm25']['p50_ms']:.1f} / {L['bm25']['p99_ms']:.1f} ms | - |")
print(f"| dense search incl. query embedding, p50 / p99 | {L['dense']['p50_ms']:.1f} / {L['dense']['p99_ms']:.1f} ms | - |")
print(f"| hybrid search, p50 / p99 | {L['hybrid']['p50_ms']:.1f} / {L['hybrid']['p99_ms']:.1f} ms | - |")
print(f"| memory | peak {z['peak_rss_ingest_mib']:,.0f} MiB ingesting; {z['rss_after_open_mib']:,.0f} MiB opened for search | index {f['index_mib']:,.0f} MiB; peak {f['peak_rss_mib']:,.0f} MiB |")
print(f"| disk | {z['disk_mib']:,.0f} MiB (documents, chunks, vectors, full text) | - |")
json.dump({"zhiku": z, "faiss": f}, open(f"bench/results/library-scale-{sys.argv[2]}.json", "w"), indent=1)
PY
