"""A stratified sample of THUCNews-10k train: `fraction` of each class, drawn with `seed`.
Used by bench/robust.sh and bench/augment.sh so that both draw the same 400 texts per seed.
    python3 bench/thucnews_sample.py SRC DST SEED [FRACTION]"""
import collections
import json
import random
import sys

src, dst, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
fraction = float(sys.argv[4]) if len(sys.argv) > 4 else 0.05
rows = [json.loads(l) for l in open(src, encoding="utf-8")]
by = collections.defaultdict(list)
for r in rows:
    by[r["label"]].append(r)
rng = random.Random(seed)
out = []
for label in sorted(by):
    xs = by[label]
    rng.shuffle(xs)
    out += xs[: max(1, round(fraction * len(xs)))]
rng.shuffle(out)
with open(dst, "w", encoding="utf-8") as f:
    for r in out:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
