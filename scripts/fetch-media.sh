#!/usr/bin/env bash
# Fetch real speech with known transcripts, and Whisper's mel filter bank, into .cache/media
# (tests and benchmarks read them; the product does not). All of it comes from PyPI packages,
# downloaded as files from the package index (source packages are not built):
#   jfk.wav                         pywhispercpp==1.5.1 sdist (whisper.cpp/samples/jfk.wav, 11 s, English)
#   basic_ref_en.wav, basic_ref_zh.wav
#                                   f5-tts==1.1.22 wheel (f5_tts/infer/examples/basic/), with their
#                                   transcripts from that package's speech_edit.py
#   mel_filters_80.npy, _128.npy    openai-whisper==20250625 sdist (whisper/assets/mel_filters.npz)
#   transcripts.json                {file: reference text}
set -euo pipefail
dest="${1:-$(dirname "$0")/../.cache/media}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
[ -f "$dest/transcripts.json" ] && [ -f "$dest/mel_filters_80.npy" ] && { echo "$dest"; exit 0; }
python3 - "$dest" <<'PY'
import hashlib, io, json, os, re, sys, tarfile, urllib.parse, urllib.request, zipfile

dest = sys.argv[1]
INDEX = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def fetch(project, filename):
    """One file of a release, by name, from the simple index (its sha256 checked)."""
    print(f"fetching {filename}", file=sys.stderr)
    html = urllib.request.urlopen(f"{INDEX}/{project}/", timeout=60).read().decode()
    for href in re.findall(r'href="([^"]+)"', html):
        url, _, frag = href.partition("#")
        if url.rsplit("/", 1)[-1] == filename:
            url = urllib.parse.urljoin(f"{INDEX}/{project}/", url)
            data = urllib.request.urlopen(url, timeout=300).read()
            if frag.startswith("sha256=") and hashlib.sha256(data).hexdigest() != frag[7:]:
                sys.exit(f"{filename}: sha256 mismatch")
            return data
    sys.exit(f"{filename} is not on the index for {project}")


def put(name, data):
    tmp = os.path.join(dest, name + ".partial")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.path.join(dest, name))


def from_tar(data, suffix):
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        m = next(m for m in t.getmembers() if m.name.endswith(suffix))
        return t.extractfile(m).read()


texts = {"jfk.wav": "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."}
put("jfk.wav", from_tar(fetch("pywhispercpp", "pywhispercpp-1.5.1.tar.gz"), "whisper.cpp/samples/jfk.wav"))

with zipfile.ZipFile(io.BytesIO(fetch("f5-tts", "f5_tts-1.1.22-py3-none-any.whl"))) as z:
    for name in ("basic_ref_en.wav", "basic_ref_zh.wav"):
        put(name, z.read(f"f5_tts/infer/examples/basic/{name}"))
    # Both clips' texts are given in the package's speech-editing example (the Mandarin one in
    # a commented-out block).
    edit = z.read("f5_tts/infer/speech_edit.py").decode()
    for name in ("basic_ref_en.wav", "basic_ref_zh.wav"):
        m = re.search(re.escape(name) + r'"\)?\)?\s*\n#?\s*origin_text = "([^"]+)"', edit)
        if m:
            texts[name] = m.group(1)
for name in ("basic_ref_en.wav", "basic_ref_zh.wav"):
    if name not in texts:
        sys.exit(f"f5-tts: no transcript found for {name}")

npz = from_tar(fetch("openai-whisper", "openai_whisper-20250625.tar.gz"), "whisper/assets/mel_filters.npz")
with zipfile.ZipFile(io.BytesIO(npz)) as z:
    for n in (80, 128):
        put(f"mel_filters_{n}.npy", z.read(f"mel_{n}.npy"))

put("transcripts.json", json.dumps(texts, ensure_ascii=False, indent=1).encode())
PY
echo "$dest"
