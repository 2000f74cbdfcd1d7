"""Scores an encoder folder with sentence-transformers the way `zhiku eval --task retrieval`
does: each query of a pairs file ranks the file's distinct positives plus a corpus by cosine
similarity (ties count against), or each group of a labelled file ranks its candidates.
Loads zhiku's output folders as they are, so it also checks that sentence-transformers reads them.
    python bench/st_eval_retrieval.py MODEL DATA.jsonl [CORPUS.jsonl]
"""
import json
import sys

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

torch.set_num_threads(2)
model_dir, data = sys.argv[1], sys.argv[2]
corpus_file = sys.argv[3] if len(sys.argv) > 3 else None
rows = [json.loads(l) for l in open(data, encoding="utf-8") if l.strip()]
model = SentenceTransformer(model_dir, device="cpu")
enc = lambda texts: model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)


def rank(scores, relevant):
    best = max(s for s, r in zip(scores, relevant) if r)
    return sum(1 for s, r in zip(scores, relevant) if not r and s >= best)


if "label" in rows[0]:
    groups = []
    for r in rows:
        turns = r["context"] if isinstance(r.get("context"), list) else [r.get("query") or r.get("context")]
        kept, chars = [], 0
        for t in reversed(turns):
            chars += len(t)
            if kept and chars > 256:
                break
            kept.append(t)
        q = " ".join(reversed(kept))
        if groups and groups[-1][0] == q:
            groups[-1][1].append(r["response"]); groups[-1][2].append(r["label"] > 0)
        else:
            groups.append((q, [r["response"]], [r["label"] > 0]))
    qv = enc([g[0] for g in groups])
    ranks = [rank(list(enc(g[1]) @ qv[i]), g[2]) for i, g in enumerate(groups)]
    ks, name = (1, 2, 5), "r"
else:
    corpus = sorted(set([r["positive"] for r in rows] + ([json.loads(l)["text"] for l in open(corpus_file, encoding="utf-8") if l.strip()] if corpus_file else [])))
    index = {p: i for i, p in enumerate(corpus)}
    cv, qv = enc(corpus), enc([r["query"] for r in rows])
    scores = qv @ cv.T
    ranks = []
    for i, r in enumerate(rows):
        rel = np.zeros(len(corpus), dtype=bool); rel[index[r["positive"]]] = True
        ranks.append(rank(scores[i], rel))
    ks, name = (1, 5, 10), "recall"
out = {f"{name}@{k}": float(np.mean([x < k for x in ranks])) for k in ks}
out["mrr"] = float(np.mean([1.0 / (x + 1) for x in ranks]))
out["queries"] = len(ranks)
print(json.dumps(out))
