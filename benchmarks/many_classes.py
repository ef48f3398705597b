"""Many identities, few images each: seen accuracy and unseen MAP@R of each loss against softmax, over seeds.

Data: `mnist_numbers` (three-digit numbers written by random MNIST writers, 16 images each) with `identity_dls`
(70 % of the numbers seen: 12 training and 4 validation images each; the other 30 % unseen). Training: the paper's
CNN, `fit_one_cycle(epochs, lr)` at `cosine-compare`'s defaults, each loss at the package's defaults unless a margin
spec says otherwise ('m2=0.5,s=30' is the old default recipe). A run `StuckRunWatch` flags is listed as failed.

    python benchmarks/many_classes.py                                  # 'hard' data, 1,000 numbers, 3 seeds
    python benchmarks/many_classes.py --setting easy --losses softmax arcface 'm2=0.5,s=30'
"""
import argparse, os, time, warnings
os.environ.setdefault('OMP_NUM_THREADS', '1')
import numpy as np, pandas as pd, torch
from cosine_losses.identities import mnist_numbers, identity_dls
from cosine_losses.compare import train_one
from cosine_losses.watch import StuckRunWarning

SETTINGS = {  # `mnist_numbers` arguments: how hard the digits are to read
    'hard': dict(size=12, thin=1, shift=3, stretch=False),  # 12×36 px, thin faint strokes: softmax far below 100 %
    'easy': dict(),                                         # MNIST's own 28×28 digits, side by side
}

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--setting', default='hard', choices=list(SETTINGS))
    p.add_argument('--n-ids', type=int, default=1000, help='numbers (identities); 70 %% of them seen')
    p.add_argument('--losses', nargs='+', default=['softmax', 'arcface', 'cosface', 'combined'])
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--lr', type=float, default=3e-2)
    p.add_argument('--out', default=None, help='CSV of every run')
    a = p.parse_args()
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    rows = []
    for seed in range(a.seeds):
        x,y,names = mnist_numbers(n_ids=a.n_ids, per_id=16, digits=3, seed=seed, **SETTINGS[a.setting])
        dls = identity_dls(x, y, names, seen=.7, seed=seed)
        for loss in a.losses:
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', StuckRunWarning)
                r = train_one(dls, loss, a.epochs, seed, a.lr, quiet=True).iloc[-1]
            rows.append(dict(loss=loss, seed=seed, seen_acc=100*r.accuracy, map_at_r=100*r.map_at_r, p_at_1=100*r.precision_at_1,
                             failed=bool(r.failed), seconds=time.perf_counter() - t))
            print(f"seed {seed} {loss:>16}: seen accuracy {rows[-1]['seen_acc']:6.2f} %, unseen MAP@R {rows[-1]['map_at_r']:6.2f} %, "
                  f"P@1 {rows[-1]['p_at_1']:6.2f} %{', FAILED (did not learn)' if r.failed else ''}, {rows[-1]['seconds']:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    if a.out: df.to_csv(a.out, index=False)
    g = df.groupby('loss', sort=False)
    summ = g[['seen_acc', 'map_at_r', 'p_at_1']].agg(['mean', 'std']).round(2)
    summ[('failed', 'runs')],summ[('chance %', '')] = g.failed.sum(),round(100/round(.7*a.n_ids), 3)
    if 'softmax' in df.loss.values:
        sm = df[df.loss == 'softmax'].set_index('seed')
        for c in ('seen_acc', 'map_at_r'): summ[(f'{c} / softmax', 'mean')] = g.apply(lambda d: (d.set_index('seed')[c]/sm[c]).mean()).round(3)
    print(f"\n{a.setting} data, {round(.7*a.n_ids)} seen and {a.n_ids - round(.7*a.n_ids)} unseen identities, 16 images each; "
          f"fit_one_cycle({a.epochs}, {a.lr}), {a.seeds} seeds (mean, std; ratios per seed, then averaged)\n")
    print(summ.to_string())

if __name__ == '__main__': main()
