#!/usr/bin/env python3
"""Checks that a LoRA adapter written by `zhiku train --peft lora` loads in Python PEFT and
predicts what zhiku predicts: PeftModel.from_pretrained on AutoModelForSequenceClassification of
the base (labels from the adapter's config.json), against `zhiku predict --json` on the same
texts. Exits non-zero when the top labels differ or a probability is off by more than 1e-4.

    python scripts/check_peft_interop.py runs/news-lora [--zhiku target/release/zhiku]
(needs torch, transformers, peft)
"""
import argparse
import json
import subprocess
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

TEXTS = [
    "Shares in the bank fell after profits dropped sharply.",
    "The striker scored twice in the second half.",
    "The new phone has a faster chip and a better camera.",
    "知库让知识平台在自己的数据上微调模型。",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter")
    ap.add_argument("--zhiku", default="target/release/zhiku")
    a = ap.parse_args()
    adapter_cfg = json.load(open(f"{a.adapter}/adapter_config.json"))
    head = json.load(open(f"{a.adapter}/config.json"))
    if head.get("zhiku_pooling", "pooler") != "pooler":
        sys.exit("only adapters with transformers' pooler head (--pooling pooler) map onto BertForSequenceClassification")
    id2label = {int(k): v for k, v in head["id2label"].items()}
    base = AutoModelForSequenceClassification.from_pretrained(
        adapter_cfg["base_model_name_or_path"], num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model = PeftModel.from_pretrained(base, a.adapter).eval()
    tok = AutoTokenizer.from_pretrained(a.adapter)
    enc = tok(TEXTS, padding=True, truncation=True, max_length=head.get("zhiku_max_length", 128), return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**enc).logits, -1)
    out = subprocess.run([a.zhiku, "predict", "--model", a.adapter, "--json", "--top-k", str(len(id2label)), *TEXTS],
                         check=True, capture_output=True, text=True).stdout
    worst, same = 0.0, True
    for row, line in zip(probs, out.splitlines()):
        z = {s["label"]: s["score"] for s in json.loads(line)["scores"]}
        worst = max(worst, max(abs(z[id2label[i]] - float(p)) for i, p in enumerate(row)))
        same &= max(z, key=z.get) == id2label[int(row.argmax())]
    print(f"PEFT vs zhiku: same top label for all {len(TEXTS)} texts: {same}; max probability difference {worst:.2e}")
    sys.exit(0 if same and worst < 1e-4 else 1)


if __name__ == "__main__":
    main()
