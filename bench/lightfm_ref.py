"""LightFM with user features on a cold-users split: the reference for zhiku's user-feature
fallback (bench/recommend_users.sh).

LightFM (WARP loss) learns an embedding per user feature value (age band, gender, occupation)
beside each training user's own; a test user, never seen in training, is scored from their
feature embeddings alone. Items that had no training interaction are left out of the ranking, as
zhiku's behaviour models leave them out. Metrics as zhiku's (binary relevance, k = 10, all
items ranked): NDCG, precision, recall.

usage: lightfm_ref.py TRAIN.tsv TEST.tsv USERS.tsv [--epochs 30] [--components 32] [--seed 42]
prints one JSON object.
"""
import argparse
import csv
import json
import math
import time

import numpy as np
from lightfm import LightFM
from lightfm.data import Dataset


def read_log(path):
    with open(path) as f:
        return [(r["user_id"], r["item_id"]) for r in csv.DictReader(f, delimiter="\t")]


def age_band(age, edges):
    # The same quantile bins zhiku's user table reader makes (edges from every user's age).
    return sum(age >= e for e in edges)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train")
    ap.add_argument("test")
    ap.add_argument("users")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--components", type=int, default=32)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--k", type=int, default=10)
    a = ap.parse_args()
    train, test = read_log(a.train), read_log(a.test)
    with open(a.users) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    ages = sorted(float(r["age"]) for r in rows)
    edges = sorted({ages[b * len(ages) // 5] for b in range(1, 5)})
    feats = {r["user_id"]: [f"age:{age_band(float(r['age']), edges)}", f"gender:{r['gender']}", f"occupation:{r['occupation']}"] for r in rows}
    train_users = sorted({u for u, _ in train})
    test_users = sorted({u for u, _ in test})
    items = sorted({i for _, i in train})
    ds = Dataset(user_identity_features=True, item_identity_features=True)
    all_feature_values = sorted({v for fs in feats.values() for v in fs})
    ds.fit(users=train_users + [u for u in test_users if u not in set(train_users)], items=items, user_features=all_feature_values)
    interactions, _ = ds.build_interactions(train)
    user_features = ds.build_user_features([(u, feats[u]) for u in train_users + test_users])
    started = time.time()
    model = LightFM(loss="warp", no_components=a.components, random_state=a.seed)
    model.fit(interactions, user_features=user_features, epochs=a.epochs, num_threads=2)
    fit_s = time.time() - started
    user_index, _, item_index, _ = ds.mapping()
    item_ids = np.arange(len(items), dtype=np.int32)
    relevant = {}
    for u, i in test:
        if i in item_index:
            relevant.setdefault(u, set()).add(item_index[i])
    all_relevant = {}
    for u, i in test:
        all_relevant.setdefault(u, set()).add(i)
    ndcg = precision = recall = 0.0
    for u in test_users:
        scores = model.predict(user_index[u], item_ids, user_features=user_features, num_threads=2)
        top = np.argsort(-scores, kind="stable")[: a.k]
        rel = relevant.get(u, set())
        hits = [1 if t in rel else 0 for t in top]
        dcg = sum(h / math.log(r + 2) for r, h in enumerate(hits))
        n_rel = len(all_relevant[u])
        ideal = sum(1 / math.log(r + 2) for r in range(min(n_rel, a.k)))
        ndcg += dcg / ideal
        precision += sum(hits) / a.k
        recall += sum(hits) / n_rel
    n = len(test_users)
    print(json.dumps({"name": "lightfm (warp, user features)", "users": n, f"ndcg@{a.k}": ndcg / n, f"precision@{a.k}": precision / n,
                      f"recall@{a.k}": recall / n, "fit_seconds": fit_s, "epochs": a.epochs, "components": a.components}))


if __name__ == "__main__":
    main()
