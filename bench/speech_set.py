"""A larger English speech set with known transcripts, synthetic (issue 16): 60 subtitles of
../shared/datasets/news-articles spoken by espeak-ng (American and British voices, 140-175 words
a minute), transcribed by zhiku and by faster-whisper on the same CTranslate2 weights in one run:
beam search (5) without VAD on both sides, f32. Reports the corpus word error rate of each side,
how many files they transcribe identically, and the total time of each.

The speech is a formant synthesiser's, not a person's: the set measures whether the two
implementations make the same errors over many sentences (decoding rules, numbers,
punctuation), not Whisper's accuracy on real recordings. espeak-ng's Mandarin voice reads tone
numbers rather than syllables, so the set is English only.

usage: speech_set.py ZHIKU MODEL_DIR WORK_DIR OUT_JSON [--count 60]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
import wave

from faster_whisper import WhisperModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transcribe import edit_distance, units  # noqa: E402

ARTICLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "datasets", "news-articles", "articles.jsonl")


def seconds(path):
    with wave.open(path) as w:
        return w.getnframes() / w.getframerate()


def build(work, count):
    """The first `count` articles (in file order) whose subtitle is plain ASCII of 8-30 words."""
    os.makedirs(work, exist_ok=True)
    refs_path = os.path.join(work, "transcripts.json")
    if os.path.exists(refs_path) and len(json.load(open(refs_path))) == count:
        return json.load(open(refs_path))
    refs = {}
    voices = ["en-us", "en-gb"]
    for line in open(ARTICLES, encoding="utf-8"):
        a = json.loads(line)
        s = re.sub(r"\s+", " ", (a.get("subtitle") or "")).strip()
        if not s or not s.isascii() or not 8 <= len(s.split()) <= 30:
            continue
        i = len(refs)
        name = f"s{i:03d}.wav"
        subprocess.run(["espeak-ng", "-v", voices[i % 2], "-s", str(140 + (i * 7) % 36), "-w", os.path.join(work, name), s], check=True)
        refs[name] = s
        if len(refs) == count:
            break
    json.dump(refs, open(refs_path, "w"), indent=1)
    return refs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("zhiku")
    ap.add_argument("model")
    ap.add_argument("work")
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=60)
    a = ap.parse_args()
    refs = build(a.work, a.count)
    files = sorted(refs)
    fw = WhisperModel(a.model, device="cpu", compute_type="float32", cpu_threads=2)
    fw_text, t = {}, time.time()
    for f in files:
        segs, _ = fw.transcribe(os.path.join(a.work, f), beam_size=5, vad_filter=False, language="en")
        fw_text[f] = "".join(s.text for s in segs).strip()
    fw_s = time.time() - t
    p = subprocess.run([a.zhiku, "transcribe", "--model", a.model, "--language", "en", "--vad", "off", "--beam-size", "5", "--format", "json"] + [os.path.join(a.work, f) for f in files], capture_output=True, text=True, check=True)
    zh_text = {os.path.basename(json.loads(l)["file"]): json.loads(l)["text"] for l in p.stdout.splitlines()}
    zh_s = sum(float(x) for x in re.findall(r"audio in ([0-9.]+) s", p.stderr))
    rows, totals = [], {"zhiku": 0, "faster-whisper": 0}
    words = 0
    for f in files:
        r = units(refs[f], "en")
        words += len(r)
        e = {"zhiku": edit_distance(units(zh_text[f], "en"), r), "faster-whisper": edit_distance(units(fw_text[f], "en"), r)}
        for k in totals:
            totals[k] += e[k]
        rows.append({"file": f, "reference": refs[f], "zhiku": zh_text[f], "faster_whisper": fw_text[f], "edits": e, "words": len(r)})
    out = {
        "model": a.model, "files": len(files), "reference_words": words,
        "audio_seconds": sum(seconds(os.path.join(a.work, f)) for f in files),
        "wer": {k: v / words for k, v in totals.items()},
        "identical_text": sum(r["zhiku"] == r["faster_whisper"] for r in rows),
        "seconds": {"zhiku": zh_s, "faster-whisper": fw_s},
        "rows": rows,
    }
    json.dump(out, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
