"""Compares `zhiku ocr` with RapidOCR on bench/ocr.sh's pages: same text per page, character
error rate against the drawn text (as drawn, and with spaces removed, since PP-OCR's English
often drops them), and time per page (the fastest of the repeats, model loading excluded).

    python3 bench/ocr_compare.py TRUTH.json RAPIDOCR.jsonl ZHIKU.jsonl OUT.json
"""
import datetime
import json
import os
import sys


def lev(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def load(path):
    runs = {}
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        f = os.path.basename(r["file"])
        if f not in runs or r["seconds"] < runs[f]["seconds"]:
            runs[f] = r
    return runs


truth = {t["file"]: t for t in json.load(open(sys.argv[1], encoding="utf-8"))}
tools = {"rapidocr": load(sys.argv[2]), "zhiku": load(sys.argv[3])}
rows, groups = [], {}
for f, t in sorted(truth.items()):
    drawn = "\n".join(t["lines"])
    row = {"file": f, "kind": t["kind"], "style": t["style"], "chars": len(drawn)}
    for tool, runs in tools.items():
        text = runs[f]["text"]
        row[tool] = {
            "seconds": runs[f]["seconds"],
            "edits": lev(text, drawn),
            "edits_no_spaces": lev(text.replace(" ", ""), drawn.replace(" ", "")),
            "chars_no_spaces": len(drawn.replace(" ", "")),
            "lines": len(runs[f]["lines"]),
        }
    row["same_text"] = tools["rapidocr"][f]["text"] == tools["zhiku"][f]["text"]
    rows.append(row)
    for g in ("all", t["kind"], t["style"]):
        groups.setdefault(g, []).append(row)

summary = {}
print(f"{'pages':12} {'n':>3} | {'same text':>9} | {'CER rapid':>9} {'zhiku':>7} | {'no-space rapid':>14} {'zhiku':>7} | {'rapid s':>8} {'zhiku s':>8} {'speed x':>7}")
for g in ["all", "zh", "en", "clean", "turned", "jpeg-noisy", "upside-down"]:
    rs = groups.get(g, [])
    if not rs:
        continue
    s = {"pages": len(rs), "same_text": sum(r["same_text"] for r in rs)}
    for tool in tools:
        s[tool] = {
            "cer": sum(r[tool]["edits"] for r in rs) / sum(r["chars"] for r in rs),
            "cer_no_spaces": sum(r[tool]["edits_no_spaces"] for r in rs) / sum(r[tool]["chars_no_spaces"] for r in rs),
            "seconds": sum(r[tool]["seconds"] for r in rs),
        }
    s["speed_ratio"] = s["rapidocr"]["seconds"] / s["zhiku"]["seconds"]
    summary[g] = s
    print(f"{g:12} {len(rs):3} | {s['same_text']:>4}/{len(rs):<4} | {s['rapidocr']['cer']:9.4f} {s['zhiku']['cer']:7.4f} | {s['rapidocr']['cer_no_spaces']:14.4f} {s['zhiku']['cer_no_spaces']:7.4f} | {s['rapidocr']['seconds']:8.2f} {s['zhiku']['seconds']:8.2f} {s['speed_ratio']:6.2f}x")
print("CER: character edits / characters drawn; speed x: RapidOCR's time / zhiku's (per page, fastest of the repeats, models loaded)")
out = {"date": datetime.date.today().isoformat(), "command": "bench/ocr.sh", "summary": summary, "rows": rows}
with open(sys.argv[4] + ".tmp", "w", encoding="utf-8") as f:
    json.dump(out, f, ensure_ascii=False, indent=1)
os.replace(sys.argv[4] + ".tmp", sys.argv[4])
