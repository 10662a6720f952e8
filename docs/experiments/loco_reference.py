"""Fifteenth round (issue 21): the voice head across corpora, with a domain reference.

Leave one corpus out over the six corpora, on the voice branch's cached window statistics
(no CNN training): a logistic regression on five corpora, tested on the sixth, with the
statistics relative to a per-corpus reference (``--norm mean``) or not (``none``).  The
training references are either every window's mean (``--ref-train all``) or weighted to
60 % neutral (``prior``); the test corpus's is its whole mean (``all``), the mean of a
seeded 200-utterance stream with 60 % neutral (``stream``: a line after it has heard
them), or the mean of the training references (``cold``: a line that heard nothing).
``--cnn DIR`` fuses the file probabilities with a run's dumped CNN probabilities
(``folds/cross_corpus-*.probs.npz``) at the log weights ``--w``; ``--dbin`` also fits a
binary distress head.  Run from the repository root with the training extra installed:

    python docs/experiments/loco_reference.py --norm mean --ref-train prior \
        --ref-test stream --c 0.002 --cnn /tmp/h11/probsA/folds --w 0,0.15,0.3,0.5

It reads the corpora through ``train.windowsets`` (the roots below) and the cache
``--cache``; figures: docs/experiments/LOG.md, fifteenth round.
"""
import argparse
import time
from pathlib import Path
import numpy as np

from train.config import load_config
from train.windowsets import WindowSets

ROOTS = ['../shared/corpora', str(Path.home() / '.cache/serd/corpora')]


def sets(cache, progress=False):
    cfg = load_config(None, [f"corpora_roots=[{','.join(ROOTS)}]", f'cache_dir={cache}', 'augment.copies=1'])
    return cfg, WindowSets(cfg, progress=progress)

from train.taxonomy import SIX
from sklearn.linear_model import LogisticRegression

ap = argparse.ArgumentParser()
ap.add_argument('--cache', default='/tmp/h11/cache')
ap.add_argument('--norm', default='none')   # none | mean | meanstd
ap.add_argument('--ref-train', default='all')  # all | prior
ap.add_argument('--ref-test', default='all')  # all | stream
ap.add_argument('--n-stream', type=int, default=200)
ap.add_argument('--c', type=float, default=0.01)
ap.add_argument('--nested', action='store_true')
ap.add_argument('--dbin', action='store_true')
ap.add_argument('--folds', default='')
ap.add_argument('--save', default='')
ap.add_argument('--cnn', default='')
ap.add_argument('--w', default='0,0.25,0.5')
ap.add_argument('--balance', default='class')  # class | corpus (each corpus equal weight, classes balanced) | cell (each corpus x class equal)
args = ap.parse_args()

cfg, ws = sets(args.cache)
items = ws.items
tax = ws.taxonomy('six')
V = {}
for v in ws.voice_variants():
    s = ws.voice_set(items, v)
    V[v.name] = (s.x.astype(np.float32), s.file.astype(np.int64))
corpus = np.array([it.corpus for it in items]); spk = np.array([it.speaker for it in items])
ytr = np.array([(-1 if (t := tax.train_label(it)) is None else t) for it in items])
yev = np.array([(-1 if (t := tax.eval_label(it)) is None else t) for it in items])
corpora = sorted(set(corpus))
NEU = 0
rng0 = np.random.default_rng(7)

def stream_order(files, rng):
    """files of one corpus in a realistic stream: 60 % neutral where it has neutral."""
    f = np.array(files); y = ytr[f]
    neu = f[y == NEU]; oth = f[y != NEU]
    if len(neu) == 0: return rng.permutation(f)
    # draw with replacement so that 60 % are neutral
    n = len(f)
    pick = np.where(rng.random(n) < 0.6, rng.choice(neu, n), rng.choice(oth, n))
    return pick

def domain_stats(x, fi, files, mode, rng):
    """reference mean/std of a domain from windows of `files`."""
    if mode == 'all':
        m = np.isin(fi, files); xx = x[m]
    else:  # realistic stream: 'prior' = 3000 draws, 'stream' = first n_stream utterances
        order = stream_order(files, rng)[:(3000 if mode == 'prior' else args.n_stream)]
        if mode == 'prior': order = rng.choice(stream_order(files, rng), 3000)
        idx = np.concatenate([np.flatnonzero(fi == f) for f in order])
        xx = x[idx]
    return xx.mean(0), xx.std(0) + 1e-3

def normalise(x, fi, files_by_dom, modes, rng):
    x = x.copy()
    if args.norm == 'none': return x
    stats = [domain_stats(x, fi, files, mode, rng) if mode != 'cold' else None for files, mode in zip(files_by_dom, modes)]
    known = [s for s in stats if s is not None]
    prior = (np.mean([s[0] for s in known], 0), np.mean([s[1] for s in known], 0))
    for files, st in zip(files_by_dom, stats):
        mu, sd = st if st is not None else prior
        m = np.isin(fi, files)
        x[m] = x[m] - mu
        if args.norm == 'meanstd': x[m] = x[m] / sd
    return x

NX = {}
def build_nx(test_c):
    for r, (x, fi) in V.items():
        doms = [np.flatnonzero(corpus == c) for c in corpora]
        modes = [args.ref_test if c == test_c else args.ref_train for c in corpora]
        NX[r] = (normalise(x, fi, doms, modes, rng0), fi)

def fit(train_files):
    xs, ys = [], []
    for r, (x, fi) in NX.items():
        m = np.isin(fi, train_files)
        xs.append(x[m]); ys.append(ytr[fi[m]])
    x = np.concatenate(xs); y = np.concatenate(ys)
    mu = x.mean(0); sd = x.std(0) + 1e-6
    if args.balance == 'class':
        lr = LogisticRegression(C=args.c, class_weight='balanced', max_iter=2000)
        lr.fit((x - mu) / sd, y)
    else:
        cs = np.concatenate([corpus[fi[np.isin(fi, train_files)]] for _, (_, fi) in NX.items()])
        w = np.ones(len(y))
        for c in np.unique(cs):
            mc = cs == c
            if args.balance == 'cell':
                for k in np.unique(y[mc]):
                    m = mc & (y == k); w[m] = 1.0 / m.sum()
            else:  # corpus: equal total per corpus, classes balanced inside it
                ks = np.unique(y[mc])
                for k in ks:
                    m = mc & (y == k); w[m] = 1.0 / (m.sum() * len(ks))
        w *= len(y) / w.sum()
        lr = LogisticRegression(C=args.c, max_iter=2000)
        lr.fit((x - mu) / sd, y, sample_weight=w)
    return lambda z: lr.predict_log_proba((z - mu) / sd)

def file_probs(pred, files, r='clean-h0.5', T=1.0):
    x, fi = NX[r]
    m = np.isin(fi, files)
    lp = pred(x[m]) / T
    p = np.exp(lp - lp.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    f = fi[m]
    uniq, inv = np.unique(f, return_inverse=True)
    P = np.zeros((len(uniq), 6)); np.add.at(P, inv, p); P /= np.bincount(inv)[:, None]
    return uniq, P

def metrics(f, P):
    y = yev[f]; k = y >= 0; y = y[k]; P = P[k]
    pr = P.argmax(1)
    bal = np.mean([np.mean(pr[y == c] == c) for c in np.unique(y)])
    dy = np.isin(y, [3, 4]); dp = np.isin(pr, [3, 4])
    dist = 0.5 * (np.mean(dp[dy]) + np.mean(~dp[~dy])) if dy.any() and (~dy).any() else float('nan')
    conf = P.max(1); ok = pr == y
    bins = np.minimum((conf * 10).astype(int), 9)
    ece = sum(abs(conf[bins == b].mean() - ok[bins == b].mean()) * (bins == b).mean() for b in range(10) if (bins == b).any())
    out = dict(bal=bal, dist=dist, ece=ece, acc=ok.mean(), conf=conf.mean())
    ps = P[:, 3] + P[:, 4]
    for th in (0.3, 0.4, 0.5):
        dp = ps >= th
        out[f'd{int(th*100)}'] = 0.5 * (np.mean(dp[dy]) + np.mean(~dp[~dy])) if dy.any() and (~dy).any() else float('nan')
    return out

def fit_T(pairs):
    """pairs: list of (pred, files) out-of-corpus; T minimising NLL."""
    best = None
    for T in np.arange(0.5, 4.01, 0.1):
        nll = 0; n = 0
        for pred, files in pairs:
            f, P = file_probs(pred, files, T=T)
            y = yev[f]; k = y >= 0
            nll += -np.log(P[k, y[k]] + 1e-9).sum(); n += k.sum()
        if best is None or nll / n < best[0]: best = (nll / n, T)
    return best[1]

res = {}
folds = args.folds.split(',') if args.folds else corpora
for c in folds:
    t = time.time()
    build_nx(c)
    test = np.flatnonzero(corpus == c)
    train = np.flatnonzero((corpus != c) & (ytr >= 0))
    pred = fit(train)
    T = 1.0
    if args.nested:
        pairs = []
        for c2 in sorted(set(corpus[train])):
            inner = np.flatnonzero((corpus != c) & (corpus != c2) & (ytr >= 0))
            pairs.append((fit(inner), np.flatnonzero(corpus == c2)))
        T = fit_T(pairs)
    out = {}
    if T != 1.0:
        f1, P1 = file_probs(pred, test, 'clean-h0.5', 1.0)
        out['T1'] = metrics(f1, P1)
    for r in NX:
        f, P = file_probs(pred, test, r, T)
        out[r] = metrics(f, P)
        if args.save and r == 'clean-h0.5':
            np.savez(f"{args.save}-{c}.npz", f=f, P=P, y=yev[f])
    if args.cnn:
        import glob
        fn = [g for g in glob.glob(args.cnn + '/*.probs.npz') if np.load(g)['corpus'][0] == c][0]
        z = np.load(fn)
        idx = [i for i in np.flatnonzero(corpus == c) if yev[i] >= 0]
        assert len(idx) == len(z['y']) and (yev[idx] == z['y']).all() and (spk[idx] == z['speaker']).all(), c
        cnn = dict(zip(idx, z['clean_int8']))
        f, P = file_probs(pred, test, 'clean-h0.5', T)
        k = np.array([i in cnn for i in f])
        f, P = f[k], P[k]
        C = np.array([cnn[i] for i in f])
        for w in map(float, args.w.split(',')):
            lp = w * np.log(np.maximum(C, 1e-6)) + (1 - w) * np.log(np.maximum(P, 1e-6))
            Q = np.exp(lp - lp.max(1, keepdims=True)); Q /= Q.sum(1, keepdims=True)
            out[f'fused{w}'] = metrics(f, Q)
    if args.dbin:
        xs, ys = [], []
        for r, (x, fi) in NX.items():
            m = np.isin(fi, train)
            xs.append(x[m]); ys.append(np.isin(ytr[fi[m]], [3, 4]).astype(int))
        xx = np.concatenate(xs); yy = np.concatenate(ys)
        mu = xx.mean(0); sd = xx.std(0) + 1e-6
        lrb = LogisticRegression(C=args.c, class_weight='balanced', max_iter=2000).fit((xx - mu) / sd, yy)
        x, fi = NX['clean-h0.5']; m = np.isin(fi, test)
        pb = lrb.predict_proba((x[m] - mu) / sd)[:, 1]
        uniq, inv = np.unique(fi[m], return_inverse=True)
        pf = np.bincount(inv, pb) / np.bincount(inv)
        yv = yev[uniq]; k = yv >= 0; dy = np.isin(yv[k], [3, 4])
        for th in (0.4, 0.5, 0.6):
            dp = pf[k] >= th
            out.setdefault('dbin', {})[f'b{int(th*100)}'] = 0.5 * (np.mean(dp[dy]) + np.mean(~dp[~dy]))
        print(c, 'dbin', {k2: round(v, 3) for k2, v in out['dbin'].items()}, flush=True)
        del out['dbin']
    out['T'] = T
    res[c] = out
    print(c, f"T={T:.1f}", {r: {k: round(v, 3) for k, v in m.items()} for r, m in out.items() if r != 'T'}, f"{time.time()-t:.0f}s", flush=True)
for r in [k for k in res[folds[0]] if k != 'T']:
    print('MEAN', r, {k: round(float(np.mean([res[c][r][k] for c in res])), 3) for k in ['bal', 'dist', 'ece', 'acc', 'conf', 'd30', 'd40', 'd50']})
    print('MAXECE', r, round(max(res[c][r]['ece'] for c in res), 3))
