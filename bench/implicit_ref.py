"""Train the `implicit` package's BPR or ALS on a training TSV and write the result as a zhiku
recommender folder, so that `zhiku recommend eval` scores it with exactly the code that scores
zhiku's own models (same candidates, same metrics).

    python bench/implicit_ref.py --train train.tsv --algorithm als --factors 16 \
        --regularization 10 --alpha 2 --iterations 15 --seed 42 --output DIR

Prints {"algorithm", "fit_seconds", "threads", ...} as JSON. The interaction matrix is binary,
as zhiku trains on it; ids are indexed in first-seen order, as zhiku's reader does.
"""
import argparse
import csv
import json
import os
import struct
import time

import numpy as np
import scipy.sparse as sp


def read_train(path, user_col, item_col):
    """Ids indexed in first-seen order, as zhiku's reader does; pandas when present (the scale
    benchmark's 10M rows), the csv module otherwise."""
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None:
        df = pd.read_csv(path, sep="\t", usecols=[user_col, item_col])
        rows, users = pd.factorize(df[user_col], sort=False)
        cols, items = pd.factorize(df[item_col], sort=False)
        users, items = [str(u) for u in users], [str(i) for i in items]
        del df
    else:
        user_ix, item_ix, rows, cols = {}, {}, [], []
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                rows.append(user_ix.setdefault(row[user_col], len(user_ix)))
                cols.append(item_ix.setdefault(row[item_col], len(item_ix)))
        users, items = list(user_ix), list(item_ix)
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(users), len(items)))
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return users, items, m


def write_safetensors(path, arrays):
    """The safetensors layout by hand: u64 header length, JSON header, raw little-endian data."""
    header, blobs, offset = {}, [], 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        dtype = {np.float32: "F32", np.uint32: "U32", np.uint64: "U64"}[a.dtype.type]
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": [int(a.size)], "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--algorithm", choices=["als", "bpr"], required=True)
    ap.add_argument("--factors", type=int, required=True)
    ap.add_argument("--regularization", type=float, required=True)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--learning-rate", type=float, default=0.01)
    ap.add_argument("--iterations", type=int, required=True)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--user-column", default="user_id")
    ap.add_argument("--item-column", default="item_id")
    ap.add_argument("--output", required=True)
    a = ap.parse_args()

    import implicit
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    users, items, ui = read_train(a.train, a.user_column, a.item_column)
    if a.algorithm == "als":
        model = AlternatingLeastSquares(factors=a.factors, regularization=a.regularization, alpha=a.alpha,
                                        iterations=a.iterations, random_state=a.seed, num_threads=a.threads)
    else:
        model = BayesianPersonalizedRanking(factors=a.factors, learning_rate=a.learning_rate, regularization=a.regularization,
                                            iterations=a.iterations, random_state=a.seed, num_threads=a.threads)
    start = time.perf_counter()
    model.fit(ui, show_progress=False)
    fit_seconds = time.perf_counter() - start
    uf, itf = np.asarray(model.user_factors, dtype=np.float32), np.asarray(model.item_factors, dtype=np.float32)
    dim = itf.shape[1]  # BPR's carry the item bias as one more column (and a 1 in the user's)
    assert uf.shape[1] == dim

    params = {"als": {"factors": dim, "regularization": a.regularization, "alpha": a.alpha, "iterations": a.iterations, "cg_steps": 3},
              "bpr": {"factors": dim, "learning_rate": a.learning_rate, "regularization": a.regularization, "iterations": a.iterations}}
    os.makedirs(a.output, exist_ok=True)
    config = {"format": 1, "algorithm": a.algorithm, "params": {a.algorithm: params[a.algorithm]}, "users": len(users),
              "items": len(items), "interactions": int(ui.nnz), "seed": a.seed,
              "training": {"implementation": f"implicit {implicit.__version__}", "fit_seconds": fit_seconds}}
    with open(os.path.join(a.output, "recommender.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(a.output, "ids.json"), "w") as f:
        json.dump({"users": users, "items": items}, f)
    popularity = np.asarray(ui.sum(axis=0)).ravel().astype(np.float32)
    write_safetensors(os.path.join(a.output, "weights.safetensors"), {
        "seen.indptr": ui.indptr.astype(np.uint64), "seen.items": ui.indices.astype(np.uint32), "seen.values": ui.data.astype(np.float32),
        "popularity": popularity, "factors.user": uf.ravel(), "factors.item": itf.ravel()})
    print(json.dumps({"algorithm": a.algorithm, "implementation": f"implicit {implicit.__version__}", "fit_seconds": fit_seconds,
                      "threads": a.threads or os.cpu_count(), "factors_stored": dim}))


if __name__ == "__main__":
    main()
