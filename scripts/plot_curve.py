#!/usr/bin/env python3
"""A line chart as SVG from CSV files, with nothing but the standard library (the
FID-vs-training-images curves of models/README.md).

    python3 scripts/plot_curve.py --out curve.svg --x images --y fid [--err sd] [--logx] [--mean] \
        --title T --xlabel X --ylabel Y [--hline VALUE:LABEL ...] NAME=FILE.csv ...

Each CSV has a header row; x, y (and the optional error column, drawn as bars) are its
named columns. One polyline per file, in the order given (NAME may hold "="; the last one
splits). --hline draws a dashed reference line (e.g. the noise floor). --logx puts x on a log
scale (e.g. network evaluations from 30 to 1000). --mean averages the rows of equal x (e.g. one
row per seed) and draws their standard deviation as the error bar.
"""
import argparse
import csv
import math
import sys

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
W, H = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 55


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def nice_ticks(lo, hi, count=6):
    """Round tick values covering [lo, hi]."""
    span = hi - lo if hi > lo else abs(hi) or 1.0
    step = 10 ** math.floor(math.log10(span / count))
    for m in (1, 2, 5, 10):
        if span / (m * step) <= count:
            step *= m
            break
    first = math.floor(lo / step) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    if ticks[-1] < hi:  # the last tick must not cut off the largest value
        ticks.append(round(v, 10))
    return ticks


def log_ticks(lo, hi):
    """1-2-5 ticks of each decade covering [lo, hi] (lo > 0)."""
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        ticks += [m * 10.0 ** e for m in (1, 2, 5)]
    inside = [t for t in ticks if lo <= t <= hi]
    below = [t for t in ticks if t < lo][-1:]
    above = [t for t in ticks if t > hi][:1]
    return below + inside + above


def label(v):
    if abs(v) >= 1e4:
        return f"{int(round(v)):,}"
    return f"{v:.0e}" if v != 0 and abs(v) < 1e-3 else f"{v:g}"


def read(path, x, y, err):
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            e = float(r[err]) if err and r.get(err) not in (None, "") else 0.0
            rows.append((float(r[x]), float(r[y]), e))
    if not rows:
        fail(f"{path} has no rows")
    return sorted(rows)


def mean_of_repeats(rows):
    """One (x, mean y, sd of y) per distinct x."""
    groups = {}
    for x, y, _ in rows:
        groups.setdefault(x, []).append(y)
    out = []
    for x, ys in sorted(groups.items()):
        m = sum(ys) / len(ys)
        sd = math.sqrt(sum((y - m) ** 2 for y in ys) / (len(ys) - 1)) if len(ys) > 1 else 0.0
        out.append((x, m, sd))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--x", required=True)
    ap.add_argument("--y", required=True)
    ap.add_argument("--err")
    ap.add_argument("--title", default="")
    ap.add_argument("--xlabel", default="")
    ap.add_argument("--ylabel", default="")
    ap.add_argument("--hline", action="append", default=[])
    ap.add_argument("--logx", action="store_true")
    ap.add_argument("--mean", action="store_true")
    ap.add_argument("series", nargs="+", help="NAME=FILE.csv")
    a = ap.parse_args()
    if a.mean and a.err:
        fail("--mean draws the spread of repeats as error bars: leave out --err")
    series = []
    for s in a.series:
        # The last "=" splits, so a name may hold one ("T0 = 0.1=t01.csv").
        name, _, path = s.rpartition("=")
        if not name or not path:
            fail(f"{s}: expected NAME=FILE.csv")
        try:
            rows = read(path, a.x, a.y, a.err)
            series.append((name, mean_of_repeats(rows) if a.mean else rows))
        except (OSError, KeyError, ValueError) as e:
            fail(f"{path}: {e}")
    hlines = []
    for h in a.hline:
        v, _, text = h.partition(":")
        try:
            hlines.append((float(v), text))
        except ValueError:
            fail(f"--hline {h}: expected VALUE:LABEL")
    xs = [p[0] for _, rows in series for p in rows]
    ys = [v for _, rows in series for p in rows for v in (p[1] - p[2], p[1] + p[2])]
    ys += [v for v, _ in hlines]
    if a.logx and min(xs) <= 0:
        fail("--logx needs x values above 0")
    xt = log_ticks(min(xs), max(xs)) if a.logx else nice_ticks(min(xs), max(xs))
    yt = nice_ticks(min(0.0, min(ys)), max(ys))
    scale = math.log10 if a.logx else (lambda v: v)
    x0, x1, y0, y1 = scale(xt[0]), scale(xt[-1]), yt[0], yt[-1]
    px = lambda v: LEFT + (scale(v) - x0) / ((x1 - x0) or 1) * (W - LEFT - RIGHT)
    py = lambda v: H - BOTTOM - (v - y0) / ((y1 - y0) or 1) * (H - TOP - BOTTOM)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">{a.title}</text>']
    for t in xt:
        out.append(f'<line x1="{px(t):.1f}" y1="{TOP}" x2="{px(t):.1f}" y2="{H - BOTTOM}" stroke="#eee"/>')
        out.append(f'<text x="{px(t):.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{label(t)}</text>')
    for t in yt:
        out.append(f'<line x1="{LEFT}" y1="{py(t):.1f}" x2="{W - RIGHT}" y2="{py(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{label(t)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" '
               f'fill="none" stroke="black"/>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 12}" text-anchor="middle">{a.xlabel}</text>')
    out.append(f'<text transform="translate(16,{(TOP + H - BOTTOM) / 2}) rotate(-90)" '
               f'text-anchor="middle">{a.ylabel}</text>')
    for v, text in hlines:
        out.append(f'<line x1="{LEFT}" y1="{py(v):.1f}" x2="{W - RIGHT}" y2="{py(v):.1f}" '
                   f'stroke="gray" stroke-dasharray="5,4"/>')
        out.append(f'<text x="{W - RIGHT - 4}" y="{py(v) - 4:.1f}" text-anchor="end" fill="gray">{text}</text>')
    for i, (name, rows) in enumerate(series):
        c = COLOURS[i % len(COLOURS)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y, _ in rows)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
        for x, y, e in rows:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{c}"/>')
            if e > 0:
                out.append(f'<line x1="{px(x):.1f}" y1="{py(y - e):.1f}" x2="{px(x):.1f}" '
                           f'y2="{py(y + e):.1f}" stroke="{c}"/>')
        out.append(f'<text x="{LEFT + 10}" y="{TOP + 16 + 16 * i}" fill="{c}">{name}</text>')
    out.append("</svg>")
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
