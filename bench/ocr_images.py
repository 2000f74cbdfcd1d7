"""Render images with known text for OCR tests and benchmarks.

Each image is a page of 1-6 lines, Chinese (THUCNews headlines) or English (news-articles
titles), drawn with a real font (WenQuanYi Zen Hei for Chinese, DejaVu Sans for English), then
optionally turned a few degrees, blurred, noised and saved as JPEG, the way scans and
screenshots arrive. The truth is the list of lines as drawn.

    python bench/ocr_images.py --out DIR --count 40 [--seed 7] [--datasets ../shared/datasets]

Writes DIR/NNN.png|jpg and DIR/truth.json ([{"file", "lines", "kind"}]). Fonts come from
Debian's fonts-wqy-zenhei and fonts-dejavu-core.
"""
import argparse
import json
import os
import random

from PIL import Image, ImageDraw, ImageFilter, ImageFont

ZH_FONT = "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"
EN_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def texts(datasets):
    zh = [json.loads(l)["text"] for l in open(os.path.join(datasets, "thucnews-10k/test.jsonl"), encoding="utf-8")]
    en = []
    for l in open(os.path.join(datasets, "news-articles/articles.jsonl"), encoding="utf-8"):
        t = json.loads(l)["title"].strip()
        if 20 <= len(t) <= 70 and t.isascii():
            en.append(t)
    return zh, en


def render(lines, font_path, size, angle=0.0, blur=0.0, noise=0.0, upside_down=False, rng=None):
    font = ImageFont.truetype(font_path, size)
    widths = [font.getbbox(l)[2] for l in lines]
    margin = size
    step = int(size * 1.7)
    w = max(widths) + 2 * margin
    h = step * len(lines) + 2 * margin
    img = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        d.text((margin, margin + i * step), line, font=font, fill=(20, 20, 20))
    if upside_down:
        img = img.rotate(180)
    if angle:
        img = img.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=(255, 255, 255))
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    if noise:
        px = img.load()
        for _ in range(int(img.width * img.height * noise)):
            x, y = rng.randrange(img.width), rng.randrange(img.height)
            v = rng.randrange(256)
            px[x, y] = (v, v, v)
    return img


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--datasets", default=os.path.join(os.path.dirname(__file__), "../../shared/datasets"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    zh, en = texts(args.datasets)
    os.makedirs(args.out, exist_ok=True)
    truth = []
    for i in range(args.count):
        kind = ["zh", "en"][i % 2]
        pool, font = (zh, ZH_FONT) if kind == "zh" else (en, EN_FONT)
        lines = rng.sample(pool, rng.randint(1, 6))
        style = i // 2 % 4  # clean, turned, blurred+noised JPEG, upside down
        img = render(
            lines,
            font,
            rng.choice([22, 26, 30, 36]),
            angle=rng.uniform(-4, 4) if style == 1 else 0.0,
            blur=0.6 if style == 2 else 0.0,
            noise=0.002 if style == 2 else 0.0,
            upside_down=style == 3,
            rng=rng,
        )
        name = f"{i:03d}." + ("jpg" if style == 2 else "png")
        if style == 2:
            img.save(os.path.join(args.out, name), quality=80)
        else:
            img.save(os.path.join(args.out, name))
        truth.append({"file": name, "kind": kind, "style": ["clean", "turned", "jpeg-noisy", "upside-down"][style], "lines": lines})
    with open(os.path.join(args.out, "truth.json"), "w", encoding="utf-8") as f:
        json.dump(truth, f, ensure_ascii=False, indent=1)
    print(f"wrote {len(truth)} images to {args.out}")


if __name__ == "__main__":
    main()
