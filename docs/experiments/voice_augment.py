"""Nineteenth round (issue 21): the voice head fitted on augmented copies too, offline.

voice_heads.py (eighteenth round) with one change: the head's training rows also include
``AUGV`` augmented copies of each training file (train.augment's recipe, or with
``AUGP=speed`` speed perturbation alone), each copy its own domain, as
``voice.augment_copies`` now does in serd-train.  The statistics of the copies are
extracted by the run's own code (``WindowSets.voice_set``) into the run's cache.  Run on a
worktree at the run's commit, e.g. for run L:

    git worktree add /tmp/wtL 3b92c29 && cd /tmp/wtL
    AUGV=1 PYTHONPATH=/tmp/wtL python /work/main/docs/experiments/voice_augment.py six /tmp/cacheL /tmp/allL 'lr:0.002'

Arguments as voice_heads.py's.
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
