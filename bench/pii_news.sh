#!/usr/bin/env bash
# False positives of the personal-data masker on real text: every news article (title and text)
# of ../shared/datasets/news-articles through `zhiku library mask-pii`, then each masked span
# printed with its context for a person to judge (news has few real phone numbers and
# addresses, and should have no ID or card numbers).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${DATA:-../shared/datasets/news-articles/articles.jsonl}"
cargo build --release -q -p zhiku-cli
work=.cache/bench/pii && mkdir -p "$work"
python3 -c "
import json, sys
with open('$work/news.txt', 'w') as f:
    for l in open('$data', encoding='utf-8'):
        d = json.loads(l); f.write((d['title'] + ' ' + d['text']).replace('\n', ' ') + '\n')
"
./target/release/zhiku library mask-pii "$work/news.txt" --json > "$work/masked.jsonl"
python3 -c "
import json, re
for l in open('$work/masked.jsonl', encoding='utf-8'):
    d = json.loads(l)
    for m in re.finditer(r'.{0,50}\[(EMAIL|PHONE|ID|CARD)\].{0,20}', d['text']):
        print(m.group(0))
"
