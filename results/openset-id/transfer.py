"Calibration transfer and the per-loss table of results/openset-id: reads the runs' unseen embeddings kept by run.py"
import itertools, sys, numpy as np, pandas as pd, torch
from pathlib import Path
from cosine_losses.gallery import calibrate_threshold, achieved_far
emb_dir,out = Path(sys.argv[1]),Path(__file__).resolve().parent
rows = []
for f in sorted(emb_dir.glob('*.pt')):
    data,loss,seed = f.stem.split('_'); emb,labels = torch.load(f); labels = labels.numpy()
    classes = np.unique(labels)
    for k in 2,3:  # every split of the 5 unseen classes into k calibration classes and 5-k test classes
        for cal in itertools.combinations(classes, k):
            m = np.isin(labels, cal)
            for kind in 'verify','identify':
                c = calibrate_threshold(emb[m], labels[m], far=1e-2, kind=kind, seed=int(seed))
                got = achieved_far(emb[~m], labels[~m], c.threshold, kind=kind, seed=int(seed))
                rows.append(dict(data=data, loss=loss, seed=int(seed), kind=kind, cal=' '.join(map(str, cal)), threshold=c.threshold,
                                 achieved=got, lo=c.interval[0], hi=c.interval[1]))
    print(f.stem, flush=True)
t = pd.DataFrame(rows).assign(ratio=lambda d: d.achieved/1e-2)
t.to_csv(out/'transfer.csv', index=False)
t['within'] = t.ratio.between(.5, 2); t['covered'] = (t.achieved >= t.lo) & (t.achieved <= t.hi)
g = t.groupby(['data', 'kind', 'loss'], sort=False)
summ = pd.DataFrame(dict(splits=g.size(), median_ratio=g.ratio.median(), within_half_to_2x=g.within.mean()*100, interval_covers=g.covered.mean()*100))
print(summ.round(2).to_string())
print(t.groupby(['data', 'kind']).agg(within=('within', 'mean'), covered=('covered', 'mean')).mul(100).round(1).to_string())
summ.to_csv(out/'transfer_summary.csv')
