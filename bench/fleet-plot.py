#!/usr/bin/env python3
"""The fleet step's plot for BENCHMARKS.md: the masters' CPU per LOCK→UNLOCK cycle and the
cycles/s against the number of client processes K, one line per contender, each point the
median over the rounds with a bar from min to max.

    fleet-plot.py DATA.tsv OUT.svg TITLE

DATA.tsv has one line per contender, K and quantity, written by bench/compare:
`contender <tab> K <tab> masters_us|cycles_per_sec <tab> median <tab> min <tab> max`.
"""

import csv
import sys

import matplotlib
import matplotlib.ticker

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

LABELS = {
    "proxy": "redlock-proxy (lockbench processes)",
    "rslock": "rslock (Rust), one process each",
    "node": "node-redlock + ioredis, one process each",
}
QUANTITIES = [
    ("masters_us", "masters' CPU per cycle (µs, log scale)"),
    ("cycles_per_sec", "LOCK→UNLOCK cycles/s (all processes)"),
]


def main():
    data_path, out_path, title = sys.argv[1:4]
    points = {}
    with open(data_path, newline="") as f:
        for who, k, what, med, lo, hi in csv.reader(f, delimiter="\t"):
            points.setdefault((who, what), []).append((int(k), float(med), float(lo), float(hi)))
    # A fixed hash salt and no date: the same numbers give the same file.
    plt.rcParams["svg.hashsalt"] = "bench/compare"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (what, label) in zip(axes, QUANTITIES):
        for who in LABELS:
            pts = sorted(points.get((who, what), []))
            if not pts:
                continue
            ks = [p[0] for p in pts]
            med = [p[1] for p in pts]
            err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
            ax.errorbar(ks, med, yerr=err, marker="o", capsize=4, label=LABELS[who])
        ax.set_xlabel("client processes K")
        ax.set_ylabel(label)
        ax.set_xticks(sorted({p[0] for v in points.values() for p in v}))
        if what == "masters_us":
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
        else:
            ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out_path, metadata={"Date": None})


if __name__ == "__main__":
    main()
