"""Eighteenth round (issue 21): re-estimating the class priors per line, offline, on a
run's ``cross_corpus`` fold dumps (docs/experiments/LOG.md).

Per left-out corpus: a seeded 200-utterance stream (60 % neutral where the corpus has
neutral files), the class priors of that stream estimated by EM (Saerens et al. 2002) from
the device's file probabilities, then every file's posterior reweighted by
(prior_line / prior_train) ** alpha; balanced accuracy / distress per alpha.

    python docs/experiments/line_priors.py /tmp/cacheK/folds
"""
import numpy as np,glob,sys,zlib
def bacc(y,p): return np.mean([np.mean(p[y==c]==c) for c in np.unique(y)])
def ece(p,y,nb=10):
    conf=p.max(1); acc=(p.argmax(1)==y); e=0; b=np.linspace(0,1,nb+1)
    for i in range(nb):
        m=(conf>b[i])&(conf<=b[i+1])
        if m.any(): e+=m.mean()*abs(acc[m].mean()-conf[m].mean())
    return e
def em(P, iters=50):
    pi=np.full(P.shape[1],1/P.shape[1])
    for _ in range(iters):
        q=P*pi/ (1/P.shape[1]); q/=q.sum(1,keepdims=True); pi=q.mean(0)
    return pi
A=[0,0.25,0.5,0.75,1.0]
def temp(p,T):
    lp=np.log(np.maximum(p,1e-9))/T; lp-=lp.max(1,keepdims=True); q=np.exp(lp); return q/q.sum(1,keepdims=True)
res={}
for f in sorted(glob.glob(sys.argv[1]+'/cross_corpus-fold*.probs.npz')):
    d=np.load(f); h=d['clean_has']; y=d['y'][h]; P=d['clean_fused_int8'][h]; name=str(d['corpus'][0])
    rng=np.random.default_rng(1234+zlib.crc32(name.encode()))
    neu=np.flatnonzero(y==0); oth=np.flatnonzero(y!=0)
    if neu.size: draw=np.where(rng.random(200)<0.6, rng.choice(neu,200), rng.choice(oth,200))
    else: draw=rng.choice(len(y),200)
    pi=em(P[draw])
    row=[]
    for a in A:
        q=P*(pi*6)**a; q/=q.sum(1,keepdims=True); row.append((bacc(y,q.argmax(1)), np.mean(np.isin(y,[3,4])==np.isin(q.argmax(1),[3,4])) ))
        dis=np.isin(y,[3,4]); pd_=np.isin(q.argmax(1),[3,4]); row[-1]=(row[-1][0], (pd_[dis].mean()+(~pd_[~dis]).mean())/2)
    res[name]=row
    print('%-10s pi %s'%(name,np.round(pi,2)), ' '.join('%.3f/%.3f'%r for r in row))
print('mean      ', ' '.join('%.4f/%.4f'%(np.mean([res[n][i][0] for n in res]),np.mean([res[n][i][1] for n in res])) for i in range(len(A))))
