"""English speech sets with known transcripts (issue 16), transcribed by zhiku and by
faster-whisper on the same CTranslate2 weights in one run: beam search (5) without VAD on both
sides, f32. Reports the corpus word error rate of each side, how many files they transcribe
identically, and the total time of each.

--set espeak (synthetic): 60 subtitles of ../shared/datasets/news-articles spoken by espeak-ng
(American and British voices, 140-175 words a minute). The speech is a formant synthesiser's,
not a person's: the set measures whether the two implementations make the same errors over many
sentences (decoding rules, numbers, punctuation), not Whisper's accuracy on real recordings.
espeak-ng's Mandarin voice reads tone numbers rather than syllables, so the set is English only.

--set real: every recording of a person with a transcript that the package index carries here.
From the pocketsphinx==5.1.1 source package (test/data, BSD licence): five sentences of a
LibriVox audiobook (Sense and Sensibility), five spoken card names and "go forward ten meters";
with jfk.wav and basic_ref_en.wav from scripts/fetch-media.sh. Numbers are compared as words
("10" and "ten" are the same word) on both sides, as are "Mr." and "mister".

usage: speech_set.py ZHIKU MODEL_DIR WORK_DIR OUT_JSON [--set espeak|real] [--count 60]
"""
import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
import wave

from faster_whisper import WhisperModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transcribe import edit_distance, units  # noqa: E402

ARTICLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "datasets", "news-articles", "articles.jsonl")


def seconds(path):
    with wave.open(path) as w:
        return w.getnframes() / w.getframerate()


def build_espeak(work, count):
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


POCKETSPHINX = ("pocketsphinx", "pocketsphinx-5.1.1.tar.gz")


def fetch(project, filename):
    """One file of a release from the package index, its sha256 checked."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    html = urllib.request.urlopen(f"{index}/{project}/", timeout=60).read().decode()
    for href in re.findall(r'href="([^"]+)"', html):
        url, _, frag = href.partition("#")
        if url.rsplit("/", 1)[-1] == filename:
            data = urllib.request.urlopen(urllib.parse.urljoin(f"{index}/{project}/", url), timeout=300).read()
            if frag.startswith("sha256=") and hashlib.sha256(data).hexdigest() != frag[7:]:
                sys.exit(f"{filename}: sha256 mismatch")
            return data
    sys.exit(f"{filename} is not on the index for {project}")


def write_wav(path, pcm16, rate=16000):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16)


def build_real(work):
    os.makedirs(work, exist_ok=True)
    refs_path = os.path.join(work, "transcripts.json")
    if os.path.exists(refs_path):
        return json.load(open(refs_path))
    refs = {}
    with tarfile.open(fileobj=io.BytesIO(fetch(*POCKETSPHINX))) as t:
        root = "pocketsphinx-5.1.1/test/data/"
        read = lambda name: t.extractfile(root + name).read()  # noqa: E731
        for m in t.getmembers():
            if m.name.startswith(root + "librivox/") and m.name.endswith(".wav"):
                name = os.path.basename(m.name)
                open(os.path.join(work, name), "wb").write(read("librivox/" + name))
                refs[name] = read("librivox/" + name[:-4] + ".txt").decode().strip()
        for line in read("cards/cards.transcription").decode().splitlines():
            words, uid = re.match(r"<s>(.*)</s> \((\d+)\)", line).groups()
            name = f"cards-{uid}.wav"
            open(os.path.join(work, name), "wb").write(read(f"cards/{uid}.wav"))
            refs[name] = words.strip()
        # Headerless 16 kHz 16-bit mono; its words are the ones pocketsphinx's own tests expect.
        write_wav(os.path.join(work, "goforward.wav"), read("goforward.raw"))
        refs["goforward.wav"] = "go forward ten meters"
    media = subprocess.run(["./scripts/fetch-media.sh"], capture_output=True, text=True, check=True).stdout.strip()
    texts = json.load(open(os.path.join(media, "transcripts.json")))
    for name in ("jfk.wav", "basic_ref_en.wav"):
        shutil.copy(os.path.join(media, name), os.path.join(work, name))
        refs[name] = texts[name]
    json.dump(refs, open(refs_path + ".tmp", "w"), indent=1)
    os.replace(refs_path + ".tmp", refs_path)
    return refs


ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def spoken(words):
    """Numbers below 100 as words, and Mr./Mrs. spelt out, so that '10' and 'ten' match."""
    out = []
    for w in words:
        if w.isdigit() and int(w) < 100:
            n = int(w)
            out += [ONES[n]] if n < 20 else [TENS[n // 10]] + ([ONES[n % 10]] if n % 10 else [])
        else:
            out.append({"mr": "mister", "mrs": "missus"}.get(w, w))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("zhiku")
    ap.add_argument("model")
    ap.add_argument("work")
    ap.add_argument("out")
    ap.add_argument("--set", choices=["espeak", "real"], default="espeak")
    ap.add_argument("--count", type=int, default=60)
    a = ap.parse_args()
    refs = build_espeak(a.work, a.count) if a.set == "espeak" else build_real(a.work)
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
    norm = (lambda t: spoken(units(t, "en"))) if a.set == "real" else (lambda t: units(t, "en"))
    for f in files:
        r = norm(refs[f])
        words += len(r)
        e = {"zhiku": edit_distance(norm(zh_text[f]), r), "faster-whisper": edit_distance(norm(fw_text[f]), r)}
        for k in totals:
            totals[k] += e[k]
        rows.append({"file": f, "reference": refs[f], "zhiku": zh_text[f], "faster_whisper": fw_text[f], "edits": e, "words": len(r)})
    out = {
        "model": a.model, "set": a.set, "files": len(files), "reference_words": words,
        "audio_seconds": sum(seconds(os.path.join(a.work, f)) for f in files),
        "wer": {k: v / words for k, v in totals.items()},
        "identical_text": sum(r["zhiku"] == r["faster_whisper"] for r in rows),
        "seconds": {"zhiku": zh_s, "faster-whisper": fw_s},
        "rows": rows,
    }
    json.dump(out, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
