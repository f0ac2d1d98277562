#!/usr/bin/env python3
"""Prefix-readout criteria on per-step error curves (examples/prefix_curves.rs output).

For each criterion (prefix error with step weights k^w, w = 0..3, or the last prefix frame only),
the debiasing gain is fitted on the calib curves, then applied on another split, and the mean
read-out alpha and its long-horizon error (frames K..20) are compared with the best alpha in
hindsight of each regime (a cross marks a miss of the 0.25-or-5 % criterion).

    python3 scripts/prefix_criteria.py NS ns_calib.jsonl ns_test.jsonl
"""
import json, sys, collections
import numpy as np
def load(path):
    rows = collections.defaultdict(list)
    for line in open(path):
        r = json.loads(line); rows[(r['p'], r['traj'])].append(r)
    reg = collections.defaultdict(list)
    for (p, t), rs in rows.items():
        rs.sort(key=lambda r: r['alpha'])
        reg[p].append((np.array([r['alpha'] for r in rs]), np.array([r['free'] for r in rs]), np.array([r['forced'] for r in rs]), rs[0]['k']))
    return reg
def rel(num, den):
    with np.errstate(invalid='ignore', divide='ignore'):
        e = np.sqrt(num / den)
    e = np.where(np.isfinite(e), e, np.inf); return e
def wcrit(pw):
    def f(fr, fo, k):
        w = np.arange(1, k) ** pw
        return rel((fr[:, :k-1, 0] * w).sum(1), (fr[:, :k-1, 1] * w).sum(1))
    return f
crit = {'sum3': wcrit(0), 'wk1': wcrit(1), 'wk2': wcrit(2), 'wk3': wcrit(3),
        'last': lambda fr, fo, k: rel(fr[:, k-2, 0], fr[:, k-2, 1])}
def refine(a, c):
    # parabola through the grid minimum and its neighbours
    i = int(np.argmin(c))
    if 0 < i < len(a) - 1 and np.all(np.isfinite(c[i-1:i+2])):
        y0, y1, y2 = c[i-1], c[i], c[i+1]; h = a[i+1] - a[i]
        d = y0 - 2*y1 + y2
        if d > 0: return a[i] + 0.5 * h * (y0 - y2) / d
    return a[i]
def interp_long(a, long, x):
    return np.interp(x, a, long)
def study(path):
    out = {}
    for p, trs in sorted(load(path).items()):
        a = trs[0][0]; k = trs[0][3]
        long = np.array([rel(fr[:, k-1:, 0].sum(1), fr[:, k-1:, 1].sum(1)) for (_, fr, _, _) in trs])
        m = long.mean(0); ib = np.argmin(m)
        hb = refine(a, m)
        res = {}
        for name, f in crit.items():
            picks = np.array([refine(a, f(fr, fo, kk)) for (_, fr, fo, kk) in trs])
            res[name] = picks
        out[p] = (a, long, hb, res)
    return out
fam = sys.argv[1]
cal = study(sys.argv[2]); tst = study(sys.argv[3])
for name in crit:
    xs = np.array([v[3][name].mean() for v in cal.values()]); ys = np.array([v[2] for v in cal.values()])
    gain = (xs*ys).sum() / (xs*xs).sum()
    line = f"{fam} {name:>5} gain {gain:.3f}:"
    worst = 0
    for p, (a, long, hb, res) in tst.items():
        picks = np.clip(gain * res[name], a[0], a[-1])
        errs = [interp_long(a, long[j], x) for j, x in enumerate(picks)]
        e = np.mean(errs); eb = np.interp(hb, a, long.mean(0))
        ok = abs(picks.mean() - hb) <= 0.25 or e <= 1.05 * eb
        line += f"  {p:.2e}: {picks.mean():+.2f}/{hb:+.2f} {100*(e/eb-1):+5.1f}%{'' if ok else '✗'}"
    print(line)
