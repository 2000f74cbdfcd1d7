"""Checks that a folder written by `zhiku train` is a working Hugging Face model.

Loads it with transformers' AutoModelForSequenceClassification and AutoTokenizer, predicts the
texts of a data file, and compares with `zhiku predict --json` on the same texts: the labels must
be identical and the probabilities agree within --tol. Exits non-zero otherwise.

    python scripts/check_hf_interop.py --model runs/bbc --data .cache/data/bbc-news.jsonl \
        --zhiku target/release/zhiku --limit 200
"""
import argparse
import json
import subprocess
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="JSONL with a text field")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--zhiku", default="target/release/zhiku")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()

    texts = []
    with open(a.data, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                texts.append(json.loads(line)[a.text_column])
            if len(texts) >= a.limit:
                break
    cfg = json.load(open(f"{a.model}/config.json"))
    max_len = cfg.get("zhiku_max_length", 512)

    # `zhiku predict` reads one text per line from stdin, so both sides see the texts with
    # newlines flattened to spaces.
    texts = [t.replace("\n", " ") for t in texts]
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForSequenceClassification.from_pretrained(a.model).eval()
    probs = []
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            enc = tok(texts[i:i + 32], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            probs.extend(torch.softmax(model(**enc).logits, -1).tolist())
    hf_labels = [model.config.id2label[max(range(len(p)), key=p.__getitem__)] for p in probs]

    k = len(model.config.id2label)
    proc = subprocess.run([a.zhiku, "predict", "--model", a.model, "--json", "--top-k", str(k)],
                          input="\n".join(texts), capture_output=True, text=True, check=True)
    ours = [json.loads(l) for l in proc.stdout.splitlines() if l.strip()]
    assert len(ours) == len(texts), f"zhiku returned {len(ours)} predictions for {len(texts)} texts"
    label_mismatch, worst = 0, 0.0
    for p_hf, lab_hf, o in zip(probs, hf_labels, ours):
        if o["labels"][0] != lab_hf:
            label_mismatch += 1
        by_label = {s["label"]: s["score"] for s in o["scores"]}
        for i, p in enumerate(p_hf):
            worst = max(worst, abs(by_label[model.config.id2label[i]] - p))
    print(json.dumps({"texts": len(texts), "label_mismatches": label_mismatch, "max_prob_diff": worst,
                      "architecture": model.config.architectures, "num_labels": k}))
    if label_mismatch or worst > a.tol:
        sys.exit(1)


if __name__ == "__main__":
    main()
