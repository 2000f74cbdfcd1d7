#!/usr/bin/env bash
# OCR against RapidOCR (issue 16): 40 rendered pages with known text (bench/ocr_images.py, seed 7:
# Chinese and English, clean, turned a few degrees, blurred and noised JPEG, upside down), read by
# RapidOCR 1.4.4 (onnxruntime, 2 threads) and by `zhiku ocr` (rten, 2 threads) on the same ONNX
# models, one after the other in one run. Writes bench/results/ocr.json and prints the table.
#   bench/ocr.sh            (COUNT=40 REPEATS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/venvs/rapidocr
work=.cache/bench/ocr
mkdir -p "$work" bench/results
if [ ! -f /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  apt-get install -y -q fonts-wqy-zenhei fonts-dejavu-core >/dev/null
fi
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import rapidocr_onnxruntime" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q rapidocr-onnxruntime==1.4.4 onnxruntime==1.32.0 opencv-python==5.1.0.95 numpy==2.4.6 pillow==13.0.0
fi
./scripts/fetch-models.sh >/dev/null
cargo build --release -q -p zhiku-cli
rm -rf "$work/images"
"$venv/bin/python" bench/ocr_images.py --out "$work/images" --count "${COUNT:-40}" --seed 7 >/dev/null
images=$(cd "$work/images" && ls *.png *.jpg | sort)
rm -f "$work/rapidocr.jsonl" "$work/zhiku.jsonl"
for r in $(seq "${REPEATS:-3}"); do
  (cd "$work/images" && OMP_NUM_THREADS=2 "$OLDPWD/$venv/bin/python" "$OLDPWD/bench/ocr_rapidocr.py" --threads 2 $images) >> "$work/rapidocr.jsonl"
  (cd "$work/images" && RTEN_NUM_THREADS=2 "$OLDPWD/target/release/zhiku" ocr --model "$OLDPWD/.cache/models/ppocr-v4" --format json $images) >> "$work/zhiku.jsonl"
done
python3 bench/ocr_compare.py "$work/images/truth.json" "$work/rapidocr.jsonl" "$work/zhiku.jsonl" bench/results/ocr.json
