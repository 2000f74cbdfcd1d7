"""Synthetic implicit-feedback interactions with a realistic long tail, for the scale benchmark
(bench/recommend_scale.sh). Writes a TSV with ml-100k's columns (user_id, item_id, rating,
timestamp).

    python bench/synth_interactions.py --interactions 1000000 --users 50000 --items 100000 \
        --seed 42 --output interactions.tsv

Shape, chosen to look like a content platform's logs rather than a uniform matrix:
- item popularity is Zipf-like, p(rank r) ~ (r + 10)^-1.0 (a few items take most clicks, most
  items are rarely touched);
- user activity is Zipf-like too, p(rank r) ~ (r + 5)^-0.8 (a few heavy users, many light ones);
- taste: every user and item has one of 64 topics; 70% of a user's clicks go to items of the
  user's topic (by popularity within it), the rest to any item (by popularity), so there is
  structure for a factor model to learn.
Duplicate (user, item) pairs occur, as in real logs; readers merge them.
"""
import argparse
import numpy as np


def zipf_cdf(n, offset, exponent, rng):
    w = (np.arange(n, dtype=np.float64) + offset) ** -exponent
    order = rng.permutation(n)  # popularity rank is not the id order
    p = np.empty(n)
    p[order] = w / w.sum()
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--interactions", type=int, required=True)
    ap.add_argument("--users", type=int, required=True)
    ap.add_argument("--items", type=int, required=True)
    ap.add_argument("--topics", type=int, default=64)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--output", required=True)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    n = a.interactions
    item_p = zipf_cdf(a.items, 10.0, 1.0, rng)
    user_p = zipf_cdf(a.users, 5.0, 0.8, rng)
    user_topic = rng.integers(0, a.topics, a.users)
    item_topic = rng.integers(0, a.topics, a.items)

    users = rng.choice(a.users, size=n, p=user_p)
    items = rng.choice(a.items, size=n, p=item_p)  # the 30% of clicks outside the user's topic
    in_topic = rng.random(n) < 0.7
    for t in range(a.topics):
        pool = np.flatnonzero(item_topic == t)
        rows = np.flatnonzero(in_topic & (user_topic[users] == t))
        if len(pool) == 0 or len(rows) == 0:
            continue
        w = item_p[pool] / item_p[pool].sum()
        items[rows] = pool[np.minimum(np.searchsorted(np.cumsum(w), rng.random(len(rows))), len(pool) - 1)]
    timestamps = 1_600_000_000 + np.sort(rng.integers(0, 30_000_000, n))

    import pandas as pd
    df = pd.DataFrame({"user_id": users, "item_id": items, "rating": np.ones(n, dtype=np.int8), "timestamp": timestamps})
    tmp = a.output + ".tmp"
    df.to_csv(tmp, sep="\t", index=False)
    import os
    os.replace(tmp, a.output)
    distinct = len(np.unique(users.astype(np.int64) * a.items + items))
    top1 = np.sort(np.bincount(items, minlength=a.items))[::-1]
    print(f"{n} interactions, {len(np.unique(users))} users, {len(np.unique(items))} items seen, "
          f"{distinct} distinct pairs; the top 1% of items take {top1[:max(1, a.items // 100)].sum() / n:.0%} of clicks")


if __name__ == "__main__":
    main()
