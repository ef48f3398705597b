"Per-loss table of results/openset-id (last epoch, mean ± std over seeds) and whether the ranking of the losses changes between metrics"
import pandas as pd
from pathlib import Path
from scipy.stats import spearmanr
here = Path(__file__).resolve().parent
cols = ['accuracy', 'map_at_r', 'precision_at_1', 'rank_1', 'dir_at_far_1e-2']
res = []
for data in 'mnist','fashion':
    ep = pd.read_csv(here/data/'epochs.csv'); last = ep[ep.epoch == ep.epochs]
    g = last.groupby('loss', sort=False)[cols]
    m,s = g.mean()*100,g.std(ddof=1)*100
    t = pd.DataFrame({c: [f'{a:.2f} ± {b:.2f}' for a,b in zip(m[c], s[c])] for c in cols}, index=m.index).assign(seeds=g.size())
    print(f'\n{data}\n' + t.to_markdown())
    for a,b in ('map_at_r', 'dir_at_far_1e-2'),('map_at_r', 'rank_1'),('rank_1', 'dir_at_far_1e-2'):
        print(f'  ranking by {a} vs {b}: Spearman ρ = {spearmanr(m[a], m[b])[0]:+.2f}; order by {b}: {list(m[b].sort_values(ascending=False).index)}')
    res.append(m.assign(data=data, **{f'{c}_std': s[c] for c in cols}))
pd.concat(res).to_csv(here/'summary.csv')
