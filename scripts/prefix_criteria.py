#!/usr/bin/env python3
"""Prefix-readout criteria on per-step error curves (examples/prefix_curves.rs output).

For each criterion the debiasing gain is fitted on the calib curves, then applied on the other
splits given, and the mean read-out alpha and its long-horizon error (frames K..20) are compared
with the best alpha in hindsight of each regime (an X marks a miss of the 0.25-or-5 % criterion).

Criteria (errors relative to the truth, over the prefix's predicted frames):
  l2, wk1..wk3, last   free rollout from frame 0, L2, frame k weighted k^w, or the last frame only
  h1, h1k2             the same in the H1 semi-norm (forward-difference gradients), k^0 and k^2
  l2+h1                the sum of the L2 and H1 relative errors
  fo_l2, fo_h1, ...    one-step predictions from each observed frame (teacher forced)

    python3 scripts/prefix_criteria.py NS ns_calib.jsonl ns_select.jsonl ns_test.jsonl
"""
import json, sys, collections
import numpy as np


def load(path):
    rows = collections.defaultdict(list)
    for line in open(path):
        r = json.loads(line)
        rows[(r['p'], r['traj'])].append(r)
    reg = collections.defaultdict(list)
    for (p, t), rs in rows.items():
        rs.sort(key=lambda r: r['alpha'])
        arr = lambda key: np.array([r[key] for r in rs]) if key in rs[0] else None
        reg[p].append(dict(a=arr('alpha'), fr=arr('free'), fo=arr('forced'),
                           gfr=arr('gfree'), gfo=arr('gforced'), k=rs[0]['k']))
    return reg


def rel(num, den):
    with np.errstate(invalid='ignore', divide='ignore'):
        e = np.sqrt(num / den)
    return np.where(np.isfinite(e), e, np.inf)


def free(key, pw=0):
    def f(t):
        k, x = t['k'], t[key]
        w = np.arange(1, k) ** pw
        return rel((x[:, :k - 1, 0] * w).sum(1), (x[:, :k - 1, 1] * w).sum(1))
    return f


def last(t):
    k = t['k']
    return rel(t['fr'][:, k - 2, 0], t['fr'][:, k - 2, 1])


def forced(key):
    return lambda t: rel(t[key][:, :, 0].sum(1), t[key][:, :, 1].sum(1))


def both(f1, f2):
    return lambda t: f1(t) + f2(t)


CRITERIA = {
    'l2': free('fr'), 'wk1': free('fr', 1), 'wk2': free('fr', 2), 'wk3': free('fr', 3),
    'last': last, 'h1': free('gfr'), 'h1k2': free('gfr', 2), 'l2+h1': both(free('fr'), free('gfr')),
    'fo_l2': forced('fo'), 'fo_h1': forced('gfo'), 'fo_l2+h1': both(forced('fo'), forced('gfo')),
}
NEEDS_H1 = {'h1', 'h1k2', 'l2+h1', 'fo_h1', 'fo_l2+h1'}


def refine(a, c):
    # parabola through the grid minimum and its neighbours
    i = int(np.argmin(c))
    if 0 < i < len(a) - 1 and np.all(np.isfinite(c[i - 1:i + 2])):
        y0, y1, y2 = c[i - 1], c[i], c[i + 1]
        h = a[i + 1] - a[i]
        d = y0 - 2 * y1 + y2
        if d > 0:
            return a[i] + 0.5 * h * (y0 - y2) / d
    return a[i]


def study(path, criteria):
    out = {}
    for p, trs in sorted(load(path).items()):
        a, k = trs[0]['a'], trs[0]['k']
        long = np.array([rel(t['fr'][:, k - 1:, 0].sum(1), t['fr'][:, k - 1:, 1].sum(1)) for t in trs])
        hb = refine(a, long.mean(0))
        picks = {name: np.array([refine(a, f(t)) for t in trs]) for name, f in criteria.items()}
        out[p] = (a, long, hb, picks)
    return out


def main():
    fam, calib, others = sys.argv[1], sys.argv[2], sys.argv[3:]
    has_h1 = 'gfree' in open(calib).readline()
    criteria = {n: f for n, f in CRITERIA.items() if has_h1 or n not in NEEDS_H1}
    cal = study(calib, criteria)
    tests = [study(x, criteria) for x in others]
    for name in criteria:
        xs = np.array([v[3][name].mean() for v in cal.values()])
        ys = np.array([v[2] for v in cal.values()])
        gain = (xs * ys).sum() / (xs * xs).sum()
        line, excess = f"{fam} {name:>8} gain {gain:.3f}:", []
        for tst in tests:
            for p, (a, long, hb, picks) in tst.items():
                chosen = np.clip(gain * picks[name], a[0], a[-1])
                e = np.mean([np.interp(x, a, long[j]) for j, x in enumerate(chosen)])
                eb = np.interp(hb, a, long.mean(0))
                ok = abs(chosen.mean() - hb) <= 0.25 or e <= 1.05 * eb
                excess.append(100 * (e / eb - 1))
                line += f"  {p:.2e}: {chosen.mean():+.2f}/{hb:+.2f} {excess[-1]:+5.1f}%{'' if ok else 'X'}"
        print(line, f"  mean {np.mean(excess):+.1f}%")


main()
