#!/usr/bin/env bash
# Checks the page that `zhiku serve` shows at / in headless Chromium: loads it with a text to
# classify and two texts to compare, verifies in the rendered DOM that label scores and a
# similarity appeared, and saves a screenshot to docs/serve-page.png.
#   scripts/page-check.sh [CLASSIFIER_DIR] [ENCODER_DIR]
# Defaults: runs/demo-bbc (made by scripts/demo.sh) and .cache/models/all-MiniLM-L6-v2.
# Needs chromium (Debian: apt-get install chromium; fonts-wqy-microhei for the Chinese title).
set -euo pipefail
cd "$(dirname "$0")/.."
CLASSIFIER="${1:-runs/demo-bbc}"
ENCODER="${2:-.cache/models/all-MiniLM-L6-v2}"
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
[ -n "$CHROMIUM" ] || { echo "needs chromium (apt-get install chromium)" >&2; exit 1; }
[ -f "$CLASSIFIER/config.json" ] || { echo "no classifier at $CLASSIFIER (run scripts/demo.sh first)" >&2; exit 1; }
cargo build --release --locked -q
port=8092
target/release/zhiku serve --model news="$CLASSIFIER" --model minilm="$ENCODER" --port $port 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "localhost:$port/health" >/dev/null && break; sleep 0.5; done
url="http://127.0.0.1:$port/?model=news&text=Shares%20in%20the%20carmaker%20jumped%20after%20profits%20beat%20forecasts&embed_model=minilm&a=How%20do%20I%20reset%20my%20password%3F&b=I%20forgot%20my%20login%20details."
opts=(--headless --no-sandbox --disable-gpu --hide-scrollbars --virtual-time-budget=15000 --window-size=900,820)
dom=$("$CHROMIUM" "${opts[@]}" --dump-dom "$url" 2>/dev/null)
mkdir -p docs
"$CHROMIUM" "${opts[@]}" --screenshot=docs/serve-page.png "$url" 2>/dev/null
bars=$(grep -o 'class="bar"' <<<"$dom" | wc -l)
similarity=$(grep -o 'id="similarity">[^<]*' <<<"$dom" | sed 's/.*>//')
top=$(grep -o '<span>[^<]*</span>' <<<"$dom" | head -1 | sed 's/<[^>]*>//g')
echo "label bars: $bars, top label: $top, similarity: $similarity, screenshot: docs/serve-page.png"
[ "$bars" -ge 1 ] || { echo "FAIL: no label scores on the page" >&2; exit 1; }
[[ "$similarity" =~ ^-?[0-9]+\.[0-9]+$ ]] || { echo "FAIL: no similarity on the page" >&2; exit 1; }
echo "page check passed"
