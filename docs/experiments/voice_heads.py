"""Eighteenth and nineteenth rounds (issue 21): other voice heads than the shipped logistic regression,
offline, on a finished run's cache and fold dumps (docs/experiments/LOG.md).

A replica of ``train.fit.fit_voice`` and ``train.evaluation.line_relative`` with the head
swapped; each test file's voice probabilities are fused at file level with the run's
dumped int8 CNN probabilities (log weight 0.15).  Heads: ``lr:C`` (the shipped kind),
``mlp:UNITS:ALPHA`` (one hidden layer), ``bin:C`` (a binary distress head, scored against
the six-class argmax and P(angry) + P(fearful)).  Run with the code of the run that made
the cache on the path, so that the cache keys match, e.g. for run K:

    git worktree add /tmp/wtK ff9eec3 && cd /tmp/wtK
    PYTHONPATH=/tmp/wtK python /work/main/docs/experiments/voice_heads.py six /tmp/cacheK /tmp/allK \\
        'lr:0.002;mlp:256:3.0;bin:0.0005'

Arguments: protocol (six or cross_corpus), the run's --cache, its --out, the heads
(';'-separated), optionally the folds (comma-separated).

Nineteenth round: ``FUNC=all|pros|both`` appends functionals of each window's front-end
frames to its voice statistics (``all``: mean and std of the 40 MFCCs, voicing and
log-F0; ``pros``: 13 prosodic ones: c0's mean, std, 10th and 90th percentile and delta
std, voicing mean and voiced share, log-F0 over voiced frames: mean, std, 10th and 90th
percentile, range, delta std); ``AUGV=N`` also fits the head on N augmented copies of each
training file (train.augment's recipe; ``AUGP=speed``: speed perturbation alone), each its
own domain, as ``voice.augment_copies`` does in serd-train, e.g.

    AUGV=1 PYTHONPATH=/tmp/wtL python /work/main/docs/experiments/voice_heads.py six /tmp/cacheL /tmp/allL 'lr:0.002'
"""
import json, sys, zlib, glob, time, os
from pathlib import Path
import numpy as np
from train.config import load_config
from train.windowsets import WindowSets, labelled, select
from train.fit import neutral_index
from train.voice import warm_reference, relative_to_domains
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

proto = sys.argv[1]; cache = sys.argv[2]; run = sys.argv[3]; heads = sys.argv[4].split(';')
folds_sel = sys.argv[5] if len(sys.argv) > 5 else ''
# The corpora beside the checkout this script lives in, and the added ones.
roots = [str(Path(__file__).resolve().parents[2].parent / 'shared' / 'corpora'),
         os.path.expanduser('~/.cache/serd/corpora')]
cfg = load_config(None, [f"corpora_roots=[{','.join(roots)}]", f"cache_dir={cache}"])
ws = WindowSets(cfg, progress=False)
items = ws.items
tax = ws.taxonomy('six')
neutral = neutral_index(tax)
vcfg = cfg.voice
cv = json.load(open(f'{run}/cv-{proto}.json'))
dumps = sorted(glob.glob(f'{cache}/folds/{proto}-fold*.probs.npz'))
variants = ws.voice_variants()
VS = {v.name: ws.voice_set(items, v) for v in variants}

MODE = os.environ.get('FUNC', 'none')
from train.windowsets import WindowSet
def functionals(x):
    # x: (n, frames, 42) float; returns per-window functionals
    x = np.asarray(x, np.float32)
    out = []
    if MODE in ('all', 'both'):
        out += [x.mean(1), x.std(1)]
    if MODE in ('pros', 'both'):
        c0 = x[:, :, 0]; v = x[:, :, 40]; f = x[:, :, 41]
        d0 = np.diff(c0, axis=1)
        vm = v > 0.5
        nv = np.maximum(vm.sum(1), 1)
        fm = np.where(vm, f, 0).sum(1) / nv
        fs = np.sqrt(np.maximum(np.where(vm, (f - fm[:, None]) ** 2, 0).sum(1) / nv, 0))
        fq = np.where(vm, f, np.nan)
        with np.errstate(all='ignore'):
            p10 = np.nan_to_num(np.nanpercentile(fq, 10, axis=1)); p90 = np.nan_to_num(np.nanpercentile(fq, 90, axis=1))
        df = np.diff(f, axis=1); dvm = vm[:, 1:] & vm[:, :-1]
        dfs = np.sqrt((np.where(dvm, df, 0) ** 2).sum(1) / np.maximum(dvm.sum(1), 1))
        out += [np.stack([c0.mean(1), c0.std(1), np.percentile(c0, 10, 1), np.percentile(c0, 90, 1), d0.std(1),
                          v.mean(1), vm.mean(1), fm, fs, p10, p90, p90 - p10, dfs], 1)]
    return np.concatenate(out, 1).astype(np.float32)
if MODE != 'none':
    for v in variants:
        W = ws.window_set(items, v)
        assert len(W.x) == len(VS[v.name].x) and (W.file == VS[v.name].file).all()
        F = np.concatenate([functionals(W.x[i:i + 4000]) for i in range(0, len(W.x), 4000)])
        del W
        VS[v.name] = WindowSet(np.hstack([np.asarray(VS[v.name].x, np.float32), F]), VS[v.name].file, items)
        print('functionals', v.name, F.shape, flush=True)

from train.dataset import Variant
import dataclasses
NAUG = int(os.environ.get('AUGV', '0'))
AUGP = os.environ.get('AUGP', 'default')
if AUGP == 'speed':
    ws.aug = dataclasses.replace(ws.aug, **{k: 0.0 for k in vars(ws.aug) if k.startswith('p_') and k != 'p_speed'})
    ws.aug = dataclasses.replace(ws.aug, p_speed=1.0)
    print('aug params', ws.aug, flush=True)
need = sorted({it.corpus for it in items if proto != 'six' or it.corpus in ('ravdess', 'cremad')})
sub = [it for it in items if it.corpus in need]
AUGS = []
for k in range(1, NAUG + 1):
    v = Variant('augment', k, ws.windows)
    t0 = time.time(); AUGS.append((v, ws.voice_set(sub, v))); print('aug voice', v.name, len(AUGS[-1][1].x), f'{time.time()-t0:.0f}s', flush=True)
assert not (MODE != 'none' and NAUG), 'FUNC and AUGV together: the copies have no functionals'

def make(spec):
    kind, *a = spec.split(':')
    if kind == 'lr':
        return lambda z, y, w: LogisticRegression(C=float(a[0]), max_iter=3000).fit(z, y, sample_weight=w)
    if kind == 'bin':
        def f(z, y, w):
            yb = np.isin(y, [3, 4]).astype(int); cb = np.bincount(yb); wb = (len(yb) / (2 * cb))[yb]
            m = LogisticRegression(C=float(a[0]), max_iter=3000).fit(z, yb, sample_weight=wb); m.binary = True; return m
        return f
    if kind == 'mlp':
        h, alpha = int(a[0]), float(a[1])
        return lambda z, y, w: MLPClassifier((h,), alpha=alpha, early_stopping=True, max_iter=300,
                                             random_state=0, n_iter_no_change=8).fit(z, y, sample_weight=w)
    raise ValueError(spec)

def bacc(y, p): return np.mean([np.mean(p[y == k] == k) for k in np.unique(y)])

allres = {h: {'clean': [], 'telephone': [], 'fclean': [], 'ftel': [], 'dis': []} for h in heads}
for fi, f in enumerate(cv['per_fold']):
    if folds_sel and str(fi) not in folds_sel.split(','): continue
    t0 = time.time()
    test = set(f['test_speakers'])
    if proto == 'six':
        tr = [s for s in sorted({it.speaker for it in items if it.corpus in ('ravdess', 'cremad')}) if s not in test]
    else:
        tr = sorted({it.speaker for it in items if it.speaker not in test})
    idx, lab = labelled(items, tr, tax.train_label)
    corpus = np.array([items[i].corpus for i in idx])
    xs, ys, doms = [], [], []
    for v in variants:
        sel = select(VS[v.name], idx, lab)
        xs.append(np.asarray(sel.x, np.float32)); ys.append(sel.y_file[sel.file])
        doms.append(np.char.add(corpus[sel.file], '/' + v.name))
    pos = {it.path: i for i, it in enumerate(sub)}
    for v, S in AUGS:
        sidx = [pos[items[i].path] for i in idx]
        sel = select(S, sidx, lab)
        xs.append(np.asarray(sel.x, np.float32)); ys.append(sel.y_file[sel.file])
        doms.append(np.char.add(corpus[sel.file], '/' + v.name))
    x, y, dom = np.concatenate(xs), np.concatenate(ys), np.concatenate(doms)
    x, prior = relative_to_domains(x, y, dom, neutral, vcfg.reference())
    mean = x.mean(0); scale = x.std(0); scale[scale < 1e-6] = 1
    z = (x - mean) / scale
    cnt = np.bincount(y, minlength=6); w = (len(y) / (len(cnt[cnt > 0]) * np.maximum(cnt, 1)))[y]
    tidx, tlab = labelled(items, sorted(test), tax.eval_label)
    tcorp = np.array([items[i].corpus for i in tidx])
    d = np.load(dumps[fi])
    print(f'fold {fi} rows {len(y)} test files {len(tidx)} prep {time.time()-t0:.0f}s', flush=True)
    for h in heads:
        t1 = time.time()
        m = make(h)(z, y, w)
        for v, tag in zip(variants, ['clean', 'telephone']):
            vsel = select(VS[v.name], tidx, tlab)
            xt = np.asarray(vsel.x, np.float32); out = xt.copy()
            cc = tcorp[vsel.file]
            for c in np.unique(cc):
                mm = cc == c
                ref = warm_reference(xt[mm], vsel.file[mm], vsel.y_file, prior, vcfg.reference(), neutral,
                                     vcfg.warm_utterances, seed=ws.seed + zlib.crc32(c.encode()))
                out[mm] = xt[mm] - ref
            if getattr(m, 'binary', False):
                pb = m.predict_proba((out - mean) / scale)[:, 1]
                n = len(tidx); B = np.zeros(n); np.add.at(B, vsel.file, pb); k = np.bincount(vsel.file, minlength=n)
                has = k > 0; B = B[has] / k[has]; yt = np.asarray(tlab)[has]; dh = d[f'{tag}_has']
                fz = d[f'{tag}_fused_int8'][dh]; sd = fz[:, 3] + fz[:, 4]
                dis = np.isin(yt, [3, 4])
                def bd(pr): return (np.mean(pr[dis]) + np.mean(~pr[~dis])) / 2
                for key, val in [('bin' + tag, bd(B > 0.5)), ('argmax' + tag, bd(np.isin(fz.argmax(1), [3, 4]))),
                                 ('sum' + tag, bd(sd > 0.325)), ('avg' + tag, bd((B + sd) / 2 > 0.4)), ('avg5' + tag, bd((B + sd) / 2 > 0.5))]:
                    allres[h].setdefault(key, []).append(val)
                continue
            pw = np.zeros((len(out), 6)); pw[:, m.classes_] = m.predict_proba((out - mean) / scale)
            n = len(tidx); P = np.zeros((n, 6)); np.add.at(P, vsel.file, pw); k = np.bincount(vsel.file, minlength=n)
            has = k > 0; P = P[has] / k[has, None]; yt = np.asarray(tlab)[has]
            dh = d[f'{tag}_has']
            assert (dh == has).all() and (d['y'][dh] == yt).all(), 'dump misaligned'
            pc = d[f'{tag}_int8'][dh]
            fu = 0.15 * np.log(np.maximum(pc, 1e-6)) + 0.85 * np.log(np.maximum(P, 1e-6))
            allres[h][tag].append(bacc(yt, P.argmax(1)))
            allres[h]['f' + ('clean' if tag == 'clean' else 'tel')].append(bacc(yt, fu.argmax(1)))
            if tag == 'clean':
                dis = np.isin(yt, [3, 4]); pd_ = np.isin(fu.argmax(1), [3, 4])
                allres[h]['dis'].append((np.mean(pd_[dis]) + np.mean(~pd_[~dis])) / 2)
        r = allres[h]
        if 'binclean' in r:
            print(f'  {h:14s} ' + ' '.join(f'{k} {v[-1]:.3f}' for k, v in r.items() if v), flush=True); continue
        print(f'  {h:14s} voice {r["clean"][-1]:.3f} tel {r["telephone"][-1]:.3f} fused {r["fclean"][-1]:.3f} ftel {r["ftel"][-1]:.3f} dis {r["dis"][-1]:.3f} ({time.time()-t1:.0f}s)', flush=True)
print('MEANS', proto)
for h in heads:
    r = allres[h]
    print(f'  {h:14s} ' + ' '.join(f'{k} {np.mean(v):.4f}' for k, v in r.items() if v), flush=True)
