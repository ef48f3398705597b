"""Many identities, few images each: seen accuracy and the unseen open-set scores of each loss against softmax, over seeds.

Data: `mnist_numbers` (three-digit numbers written by random MNIST writers, 16 images each) with `identity_dls`
(70 % of the numbers seen: 12 training and 4 validation images each; the other 30 % unseen). Training: the paper's
CNN, `fit_one_cycle(epochs, lr)` at `cosine-compare`'s defaults, each loss at the package's defaults unless a margin
spec says otherwise ('m2=0.5,s=30' is the old default recipe). A run `StuckRunWatch` flags is listed as failed.
Unseen scores: MAP@R, P@1, rank-1 and DIR@FAR=1e-2 (the identification protocol is printed). With `--splits N`, each
run's unseen numbers are halved N times (`threshold_transfer`): a threshold for FAR 1e-2 calibrated on one half, the
FAR it gets on the other, and whether `calibrate_threshold`'s 80 % prediction interval covers it, per kind.

    python benchmarks/many_classes.py                                  # 'hard' data, 1,000 numbers, 3 seeds
    python benchmarks/many_classes.py --setting easy --losses softmax arcface 'm2=0.5,s=30'
    python benchmarks/many_classes.py --losses softmax arcface cosface sphereface combined --splits 5 \
        --out results/many-classes/paper_losses.csv
    python benchmarks/many_classes.py --losses arcface --heads full fused 0.3 0.1 --out results/many-classes/heads.csv
    python benchmarks/many_classes.py --losses arcface --heads full 0.3 0.1 --n-ids 3000 --digits 4 --out results/many-classes/heads_3000.csv

`--heads` trains each loss's head several ways: 'full' (every class in every step, the head and loss apart), 'fused'
(`fused_margin_loss`), or a number: Partial FC's sample rate.
"""
import argparse, os, time, warnings
os.environ.setdefault('OMP_NUM_THREADS', '1')
import numpy as np, pandas as pd, torch
from fastai.callback.core import Callback
from fastprogress import fastprogress
from cosine_losses.identities import mnist_numbers, identity_dls
from cosine_losses.experiments.compare import train_one
from cosine_losses.openset import embed
from cosine_losses.recognition.calibration import threshold_transfer
from cosine_losses.watch import StuckRunWarning

class Keep(Callback):
    "Keeps the trained learner, whose unseen embeddings the threshold check needs"
    def after_fit(self): Keep.learn = self.learn

SCORES = dict(seen_acc='accuracy', map_at_r='map_at_r', p_at_1='precision_at_1', rank_1='rank_1', dir_1e2='dir_at_far_1e-2')

SETTINGS = {  # `mnist_numbers` arguments: how hard the digits are to read
    'hard': dict(size=12, thin=1, shift=3, stretch=False),  # 12×36 px, thin faint strokes: softmax far below 100 %
    'easy': dict(),                                         # MNIST's own 28×28 digits, side by side
}

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--setting', default='hard', choices=list(SETTINGS))
    p.add_argument('--n-ids', type=int, default=1000, help='numbers (identities); 70 %% of them seen')
    p.add_argument('--digits', type=int, default=3, help='digits a number: 10^digits numbers at most')
    p.add_argument('--losses', nargs='+', default=['softmax', 'arcface', 'cosface', 'combined'])
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--lr', type=float, default=3e-2)
    p.add_argument('--splits', type=int, default=0, help='halvings of the unseen numbers per run to check the threshold interval (0: none)')
    p.add_argument('--heads', nargs='+', default=['full'], help="'full', 'fused', or a Partial FC sample rate such as 0.1")
    p.add_argument('--out', default=None, help='CSV of every run')
    a = p.parse_args()
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    fastprogress.NO_BAR = True
    rows,splits = [],[]
    for seed in range(a.seeds):
        x,y,names = mnist_numbers(n_ids=a.n_ids, per_id=16, digits=a.digits, seed=seed, **SETTINGS[a.setting])
        dls = identity_dls(x, y, names, seen=.7, seed=seed)
        for loss,head in [(l,h) for l in a.losses for h in (['full'] if l == 'softmax' else a.heads)]:
            how = {} if head == 'full' else dict(fused=True) if head == 'fused' else dict(sample_rate=float(head))
            name = loss if loss == 'softmax' or len(a.heads) == 1 else f'{loss} {head}'
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', StuckRunWarning)
                r = train_one(dls, loss, a.epochs, seed, a.lr, quiet=True, cbs=Keep(), **how).iloc[-1]
            rows.append(dict(loss=name, seed=seed, **{k: 100*r[c] for k,c in SCORES.items()}, failed=bool(r.failed),
                             seconds=time.perf_counter() - t))
            if seed == 0 and len(rows) == 1: print(r.notes, flush=True)
            if a.splits and not r.failed:
                e,l = embed(Keep.learn.model, dls.unseen)
                for kind in ('verify', 'identify'):
                    try: splits.append(threshold_transfer(e, l, 1e-2, kind, a.splits, seed=seed).assign(loss=name, seed=seed))
                    except ValueError as err: print(f'no threshold check ({kind}): {err}')
            print(f"seed {seed} {name:>16}: " + ', '.join(f"{k} {rows[-1][k]:6.2f}" for k in SCORES) +
                  f"{', FAILED (did not learn)' if r.failed else ''}, {rows[-1]['seconds']:.0f} s", flush=True)
            if a.out:  # after every run: a killed benchmark keeps what it measured
                pd.DataFrame(rows).to_csv(a.out, index=False)
                if splits: pd.concat(splits).to_csv(a.out.replace('.csv', '_splits.csv'), index=False)
    df = pd.DataFrame(rows)
    g = df.groupby('loss', sort=False)
    summ = g[list(SCORES)].agg(['mean', 'std']).round(2)
    summ[('failed', 'runs')],summ[('chance %', '')] = g.failed.sum(),round(100/round(.7*a.n_ids), 3)
    if 'softmax' in df.loss.values:
        sm = df[df.loss == 'softmax'].set_index('seed')
        for c in ('seen_acc', 'map_at_r', 'rank_1'): summ[(f'{c} / softmax', 'mean')] = g.apply(lambda d: (d.set_index('seed')[c]/sm[c]).mean()).round(3)
    print(f"\n{a.setting} data, {round(.7*a.n_ids)} seen and {a.n_ids - round(.7*a.n_ids)} unseen identities, 16 images each; "
          f"fit_one_cycle({a.epochs}, {a.lr}), {a.seeds} seeds (mean, std; ratios per seed, then averaged)\n")
    print(summ.to_string())
    if splits:
        sp = pd.concat(splits)
        cov = sp.assign(width=sp.hi/sp.lo).groupby(['kind', 'loss'], sort=False).agg(
            splits=('covered', 'size'), covered=('covered', 'mean'), within_half_2x=('within_2x', 'mean'), ratio_10=('ratio', lambda r: r.quantile(.1)),
            ratio_90=('ratio', lambda r: r.quantile(.9)), median_width=('width', 'median'), max_width=('width', 'max'))
        print(f"\nThreshold for FAR 1e-2 calibrated on half the unseen numbers, FAR got on the other half; 80 % prediction interval:\n")
        print(cov.round(2).to_string())
        print('\npooled:', sp.groupby('kind').covered.mean().round(3).to_dict())

if __name__ == '__main__': main()
