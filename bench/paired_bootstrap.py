#!/usr/bin/env python3
"""Paired bootstrap of the ROUGE-L difference between two predictions files of the same test
set (JSONL with "prediction" and "reference", in the same order): the mean difference A − B
(×100), its 95% interval from 2,000 resamples of the examples (seed 0), and how often A ≥ B.
Tokens as scripts/check_text_metrics.py makes them (characters for Chinese).

    bench/.peft-venv/bin/python bench/paired_bootstrap.py A.jsonl B.jsonl
"""
import json
import os
import random
import re
import sys

from rouge_score import rouge_scorer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from check_text_metrics import CJK, CharTokenizer  # noqa: E402


def main():
    a_path, b_path = sys.argv[1], sys.argv[2]
    a = [json.loads(l) for l in open(a_path, encoding="utf-8") if l.strip()]
    b = [json.loads(l) for l in open(b_path, encoding="utf-8") if l.strip()]
    assert len(a) == len(b) and all(x["reference"] == y["reference"] for x, y in zip(a, b)), "the files must score the same examples in the same order"
    zh = any(CJK.search(r["reference"]) for r in a)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=CharTokenizer() if zh else None)
    fa = [scorer.score(r["reference"], r["prediction"])["rougeL"].fmeasure for r in a]
    fb = [scorer.score(r["reference"], r["prediction"])["rougeL"].fmeasure for r in b]
    n = len(fa)
    rng = random.Random(0)
    boots = sorted(sum(fa[i] - fb[i] for i in (rng.randrange(n) for _ in range(n))) / n for _ in range(2000))
    diff = sum(x - y for x, y in zip(fa, fb)) / n
    print(json.dumps({"a": a_path, "b": b_path, "rougeL_difference": 100 * diff, "ci95": [100 * boots[50], 100 * boots[1949]],
                      "share_a_at_least_b": sum(x >= 0 for x in boots) / len(boots)}))


main()
