#!/usr/bin/env python3
"""Mean, spread and per-seed test accuracy of several training runs, against a baseline row:
the table bench/robust.sh and bench/augment.sh print. Reads bench/results/PREFIX-ROW-sSEED.json
(`zhiku train --json` output: its "test" accuracy, or a bare accuracy).

    python3 bench/seed_table.py PREFIX "SEEDS" ROW... [--label NAME]
"""
import argparse
import json
import statistics


def accuracy(prefix, row, seed):
    r = json.load(open(f"bench/results/{prefix}-{row}-s{seed}.json"))
    return (r["test"] if "test" in r else r)["accuracy"]


def table(prefix, seeds, rows, label, note=lambda row: "", note_header=""):
    """Prints one line per row (the first is the baseline); `note(row)` is appended to each."""
    base = statistics.mean(accuracy(prefix, rows[0], s) for s in seeds)
    print(f"{label:<22} {'mean':>7} {'std':>7} {'vs baseline':>12}  per seed{note_header}")
    for row in rows:
        xs = [accuracy(prefix, row, s) for s in seeds]
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        print(f"{row:<22} {statistics.mean(xs):>7.4f} {sd:>7.4f} {statistics.mean(xs) - base:>+12.4f}  {' '.join(f'{x:.4f}' for x in xs)}{note(row)}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("prefix")
    p.add_argument("seeds")
    p.add_argument("rows", nargs="+")
    p.add_argument("--label", default="row")
    a = p.parse_args()
    table(a.prefix, a.seeds.split(), a.rows, a.label)
