#!/usr/bin/env python3
"""The two SFT tasks measured in the README, built from ../shared/datasets with fixed splits.

- headlines: news-articles, article (first 100 words) -> its title (English); also
  headlines/test-text.jsonl ({"id", "text", "reference"}) for the lead and extractive rows;
- replies:   taobao-qa, customer question -> the shop's reply (Chinese), with a system prompt.

`make-splits` chose the splits once (seeded shuffle after dropping duplicates and near-empty
rows) and wrote the ids to bench/splits/{headlines,replies}.json, which are committed;
`build DIR` writes DIR/{task}/{train,dev,test}.jsonl from those ids, as `zhiku train --task
sft` and bench/sft_torch.py read them ({"prompt", "response"[, "system"]}).

    python3 bench/sft_data.py build .cache/sft-tasks [--datasets ../shared/datasets]
"""
import argparse
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
SPLITS = os.path.join(HERE, "splits")
HEADLINE_WORDS = 100
HEADLINE_INSTRUCTION = "Write a headline for this news article."
REPLY_SYSTEM = "你是淘宝店铺的客服，用简短、礼貌的中文回复顾客。"
SIZES = {"test": 200, "dev": 100}


def headlines(datasets):
    rows = {}
    for line in open(os.path.join(datasets, "news-articles", "articles.jsonl"), encoding="utf-8"):
        a = json.loads(line)
        words = a["text"].split()
        if a["title"].strip() and len(words) >= 50:
            body = " ".join(words[:HEADLINE_WORDS])
            rows[a["id"]] = {"prompt": HEADLINE_INSTRUCTION + "\n\n" + body, "response": a["title"].strip(), "text": body}
    return rows


def replies(datasets):
    rows = {}
    for i, line in enumerate(open(os.path.join(datasets, "taobao-qa", "qa_pairs.jsonl"), encoding="utf-8"), start=1):
        q = json.loads(line)
        if q["question"].strip() and q["answer"].strip():
            rows[str(i)] = {"system": REPLY_SYSTEM, "prompt": q["question"].strip(), "response": q["answer"].strip()}
    return rows


TASKS = {"headlines": headlines, "replies": replies}


def make_splits(datasets):
    for task, load in TASKS.items():
        rows = load(datasets)
        seen, ids = set(), []
        for k, r in rows.items():
            key = (r["prompt"], r["response"]) if task == "replies" else r["response"]
            if key not in seen:
                seen.add(key)
                ids.append(k)
        random.Random(14).shuffle(ids)
        split = {"test": ids[: SIZES["test"]], "dev": ids[SIZES["test"]: SIZES["test"] + SIZES["dev"]], "train": ids[SIZES["test"] + SIZES["dev"]:]}
        json.dump(split, open(os.path.join(SPLITS, f"{task}.json"), "w"), indent=0)
        print(task, {k: len(v) for k, v in split.items()})


def build(datasets, out):
    for task, load in TASKS.items():
        rows = load(datasets)
        split = json.load(open(os.path.join(SPLITS, f"{task}.json")))
        os.makedirs(os.path.join(out, task), exist_ok=True)
        for name, ids in split.items():
            with open(os.path.join(out, task, f"{name}.jsonl"), "w", encoding="utf-8") as f:
                for k in ids:
                    f.write(json.dumps({x: v for x, v in rows[k].items() if x != "text"}, ensure_ascii=False) + "\n")
            if task == "headlines" and name == "test":
                # The articles alone, for the lead and extractive rows (`zhiku summarize`).
                with open(os.path.join(out, task, "test-text.jsonl"), "w", encoding="utf-8") as f:
                    for k in ids:
                        f.write(json.dumps({"id": k, "text": rows[k]["text"], "reference": rows[k]["response"]}, ensure_ascii=False) + "\n")
        print(task, {k: len(v) for k, v in split.items()}, "->", os.path.join(out, task))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["make-splits", "build"])
    ap.add_argument("out", nargs="?", default=".cache/sft-tasks")
    ap.add_argument("--datasets", default=os.path.join(HERE, "..", "..", "shared", "datasets"))
    a = ap.parse_args()
    if a.command == "make-splits":
        make_splits(a.datasets)
    else:
        build(a.datasets, a.out)


main()
