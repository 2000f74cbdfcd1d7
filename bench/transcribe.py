"""Speech to text side by side (issue 16): zhiku transcribe against faster-whisper on the same
CTranslate2 weights, the same files, greedy decoding (beam 1) and beam search (5) on both sides, f32 and int8, in
one run. Called by bench/transcribe.sh with the faster-whisper venv's python.

Files: the three clips of scripts/fetch-media.sh with their transcripts (jfk.wav, the f5-tts
English and Mandarin clips) and a long recording built from them (the clips one after another
with a second of silence between, repeated, about 100 s) for the real-time factor. Error rates:
word error rate for English (lower case, punctuation dropped), character error rate for Chinese
(punctuation and spaces dropped, both sides in Simplified characters). Time is the best of
--repeats runs of the whole transcription of a file (decoding included, model loading not).

usage: transcribe.py ZHIKU MODEL_DIR MEDIA_DIR OUT_JSON [--repeats 3]
"""
import argparse
import json
import os
import re
import subprocess
import time
import unicodedata
import wave

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import decode_audio


def edit_distance(a, b):
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def units(text, lang):
    if lang == "zh":
        return [c for c in text if not unicodedata.category(c).startswith(("P", "Z", "S")) and not c.isspace()]
    text = re.sub(r"[^\w\s']", " ", text.lower())
    return text.split()


def error_rate(hyp, ref, lang):
    r = units(ref, lang)
    return edit_distance(units(hyp, lang), r) / max(1, len(r))


def write_long(media, out):
    pieces = []
    for name in ["jfk.wav", "basic_ref_en.wav"]:
        pieces.append(decode_audio(os.path.join(media, name)))
        pieces.append(np.zeros(16000, dtype=np.float32))
    audio = np.concatenate(pieces * 4)
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return len(audio) / 16000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("zhiku")
    ap.add_argument("model")
    ap.add_argument("media")
    ap.add_argument("out")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--beams", default="1,5", help="beam sizes to run (1: greedy)")
    a = ap.parse_args()
    refs = json.load(open(os.path.join(a.media, "transcripts.json")))
    long_path = os.path.join(os.path.dirname(a.out), "long-en.wav")
    long_s = write_long(a.media, long_path)
    files = [("jfk.wav", "en"), ("basic_ref_en.wav", "en"), ("basic_ref_zh.wav", "zh"), ("long-en.wav", "en")]
    if os.path.basename(a.model.rstrip("/")).endswith(".en"):
        files = [x for x in files if x[1] == "en"]  # an English-only model has no Mandarin
    path = lambda f: long_path if f == "long-en.wav" else os.path.join(a.media, f)
    long_ref = " ".join([refs["jfk.wav"], refs["basic_ref_en.wav"]] * 4)
    rows = []
    beams = [int(b) for b in a.beams.split(",")]
    for compute in ["float32", "int8"]:
        fw = WhisperModel(a.model, device="cpu", compute_type=compute, cpu_threads=2)
        for beam in beams:
            for f, lang in files:
                audio = decode_audio(path(f))
                best, text = 1e9, ""
                for _ in range(a.repeats):
                    t = time.time()
                    segs, info = fw.transcribe(audio, beam_size=beam, vad_filter=False, language=None)
                    text = "".join(s.text for s in segs)
                    best = min(best, time.time() - t)
                rows.append({"tool": "faster-whisper", "compute": compute, "beam": beam, "file": f, "seconds": best, "audio_s": len(audio) / 16000, "text": text, "language": info.language})
            for f, lang in files:
                best, out = 1e9, None
                for _ in range(a.repeats):
                    # The transcription time zhiku reports (model loading and start-up not counted,
                    # as they are not on faster-whisper's side).
                    p = subprocess.run([a.zhiku, "transcribe", "--model", a.model, "--vad", "off", "--beam-size", str(beam), "--compute-type", "f32" if compute == "float32" else "int8", "--format", "json", path(f)], capture_output=True, text=True, check=True)
                    out = json.loads(p.stdout)
                    best = min(best, float(re.search(r"audio in ([0-9.]+) s", p.stderr).group(1)))
                rows.append({"tool": "zhiku", "compute": compute, "beam": beam, "file": f, "seconds": best, "audio_s": out["duration"], "text": out["text"], "language": out["language"]})
    # Chinese is scored in Simplified characters on both sides: zhiku writes them, faster-whisper's
    # text is converted with OpenCC's tables (the pure-Python port).
    from opencc import OpenCC
    t2s = OpenCC("t2s")
    for r in rows:
        if r["file"] == "basic_ref_zh.wav" and r["tool"] == "faster-whisper":
            r["text_simplified"] = t2s.convert(r["text"])
    for r in rows:
        f = r["file"]
        lang = "zh" if f.endswith("_zh.wav") else "en"
        ref = long_ref if f == "long-en.wav" else refs[f]
        r["error_rate"] = error_rate(r.get("text_simplified", r["text"]), ref, lang)
        r["metric"] = "cer" if lang == "zh" else "wer"
        r["rtf"] = r["seconds"] / r["audio_s"]
    json.dump({"model": a.model, "long_audio_s": long_s, "rows": rows}, open(a.out, "w"), ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
