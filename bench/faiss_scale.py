"""FAISS's HNSW on the vectors and queries `zhiku-library`'s scale example wrote: build time,
single-query latency p50/p99, recall@10 against exact search, memory; the parameters zhiku's
index uses (M 16, efConstruction 128, the efSearch zhiku used for k = 10, inner product on unit
vectors).
    python bench/faiss_scale.py DIR   (DIR: vectors.f32, queries.f32, zhiku.json)
"""
import json
import os
import resource
import sys
import time

import faiss
import numpy as np

d = sys.argv[1]
meta = json.load(open(os.path.join(d, "zhiku.json")))
dim = meta["dimensions"]
xb = np.fromfile(os.path.join(d, "vectors.f32"), dtype="<f4").reshape(-1, dim)
xq = np.fromfile(os.path.join(d, "queries.f32"), dtype="<f4").reshape(-1, dim)
threads = int(os.environ.get("THREADS", "2"))
faiss.omp_set_num_threads(threads)

# Exact top 10 (inner product = cosine on unit vectors), in blocks.
exact = np.zeros((len(xq), 10), dtype=np.int64)
best = np.full((len(xq), 10), -np.inf, dtype=np.float32)
for start in range(0, len(xb), 200_000):
    s = xq @ xb[start:start + 200_000].T
    idx = np.argpartition(-s, 10, axis=1)[:, :10] if s.shape[1] > 10 else np.argsort(-s, axis=1)[:, :10]
    vals = np.take_along_axis(s, idx, axis=1)
    allv = np.concatenate([best, vals], axis=1)
    alli = np.concatenate([exact, idx + start], axis=1)
    order = np.argsort(-allv, axis=1)[:, :10]
    best, exact = np.take_along_axis(allv, order, axis=1), np.take_along_axis(alli, order, axis=1)

rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
index = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
index.hnsw.efConstruction = 128
t = time.time()
index.add(xb)
build_s = time.time() - t
index.hnsw.efSearch = meta.get("ef_search", 64)
faiss.omp_set_num_threads(1)  # one query at a time, as a server answers them
ms, found = [], 0
for i in range(len(xq)):
    t = time.perf_counter()
    _, ids = index.search(xq[i:i + 1], 10)
    ms.append((time.perf_counter() - t) * 1e3)
    found += len(set(ids[0]) & set(exact[i]))
ms.sort()
out = {
    "faiss": faiss.__version__, "chunks": len(xb), "build_s": build_s, "build_threads": threads,
    "vectors_per_s": len(xb) / build_s, "p50_ms": ms[len(ms) // 2], "p99_ms": ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))],
    "recall_at_10": found / (10 * len(xq)), "ef_search": index.hnsw.efSearch, "index_mib": len(faiss.serialize_index(index)) / 2**20,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_index_mib": rss0,
}
print(json.dumps(out))
