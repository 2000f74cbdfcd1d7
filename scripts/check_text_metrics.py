#!/usr/bin/env python3
"""Checks zhiku's generation scores against the reference packages on the same outputs: for
each predictions file (JSONL with "prediction" and "reference"), ROUGE-1/2/L F1 from Google's
`rouge-score` (mean over examples, no stemming; for Chinese, with a tokeniser giving one token
per CJK character and ASCII words, which is what zhiku's character-level ROUGE is) and corpus
BLEU from `sacrebleu` (tokeniser 13a, or zh for Chinese), against `zhiku eval --task generation
--predictions FILE --json`. Exits non-zero if any score differs by more than 1e-6 (BLEU 1e-4).

    bench/.peft-venv/bin/python scripts/check_text_metrics.py preds/*.jsonl [--zhiku target/release/zhiku]
(needs rouge-score and sacrebleu)
"""
import argparse
import json
import re
import subprocess
import sys

import sacrebleu
from rouge_score import rouge_scorer

CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]")


class CharTokenizer:
    """ASCII letters and digits as words (lower-cased), every other letter or digit its own token."""

    def tokenize(self, text):
        out, word = [], ""
        for c in text.lower():
            if c.isascii() and (c.isalpha() or c.isdigit()) and (c.islower() or c.isdigit()):
                word += c
                continue
            if word:
                out.append(word)
                word = ""
            if not c.isascii() and c.isalnum():
                out.append(c)
        if word:
            out.append(word)
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--zhiku", default="target/release/zhiku")
    a = ap.parse_args()
    bad = 0
    for path in a.files:
        rows = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
        preds, refs = [r["prediction"] for r in rows], [r["reference"] for r in rows]
        zh = any(CJK.search(r) for r in refs)
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False, tokenizer=CharTokenizer() if zh else None)
        sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
        for p, r in zip(preds, refs):
            s = scorer.score(r, p)
            for k in sums:
                sums[k] += s[k].fmeasure
        ref = {k: 100 * v / len(rows) for k, v in sums.items()}
        ref["bleu"] = sacrebleu.corpus_bleu(preds, [refs], tokenize="zh" if zh else "13a").score
        out = json.loads(subprocess.run([a.zhiku, "eval", "--task", "generation", "--predictions", path, "--json"], capture_output=True, text=True, check=True).stdout)
        ours = {"rouge1": out["rouge1"]["f1"], "rouge2": out["rouge2"]["f1"], "rougeL": out["rougeL"]["f1"], "bleu": out["bleu"]}
        diffs = {k: abs(ours[k] - ref[k]) for k in ref}
        ok = all(d <= (1e-4 if k == "bleu" else 1e-6) for k, d in diffs.items())
        bad += not ok
        print(json.dumps({"file": path, "language": "zh" if zh else "en", "same": ok, "zhiku": ours, "reference_packages": ref}))
    print(f"{len(a.files) - bad} of {len(a.files)} files: zhiku's ROUGE and BLEU equal rouge-score's and sacrebleu's", file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
