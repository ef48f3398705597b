"""Do the margin losses train every time? Each loss at `cosine_learner`'s defaults beside softmax, on several many-identity
families, seeds, learning rates, batch sizes and thread counts; a run fails if `StuckRunWatch` flags it (at chance, sinking,
memorising, collapsed) or if it gets under 0.9 × softmax's seen accuracy or unseen MAP@R under the same settings.

Families (1,000 identities, 16 images each; 70 % seen with 12 training and 4 validation images, 30 % unseen):
  numbers      `mnist_numbers`, hard to read (12 × 36 px, thin faint strokes, shifted)
  outfits      `fashion_outfits`, three Fashion-MNIST pieces side by side
  glyphs       `glyph_identities`: two-character codes in 20 typefaces, random ink, background, place and tilt, in colour
  glyphs-hard  the same, tilted and moved further, noisier, with less contrast

Every run is a row of `--out` (CSV), written as it ends: run the same command again after a kill and it goes on where it stopped.

    python benchmarks/robustness.py                                   # 4 families × 5 losses × 3 seeds at fit_one_cycle(10, 3e-2), 2 threads
    python benchmarks/robustness.py --families glyphs-hard --seeds 1 --lrs 1e-2 3e-2 1e-1 --bss 64 256 --threads 1 2 \\
        --out results/robustness/sensitivity.csv                      # the sensitivity sweep
    python benchmarks/robustness.py --families glyphs --losses softmax curricularface adaface elasticface magface \\
        --out results/robustness/family.csv                           # the family's presets
    python benchmarks/robustness.py --families glyphs-hard --bss 256 --losses softmax cosface arcface --wd 0.1 --out wd.csv  # a remedy tried
    python benchmarks/robustness.py --wd 0.01 --out results/robustness/wd0.01/runs.csv  # every learner at fastai's decay, 0.01
"""
import argparse, itertools, os, time, warnings
from pathlib import Path
os.environ.setdefault('OMP_NUM_THREADS', '1')
import numpy as np, pandas as pd, torch
from fastprogress import fastprogress
from fastai.callback.core import Callback
from cosine_losses.identities import mnist_numbers, fashion_outfits, glyph_identities, identity_dls
from cosine_losses.experiments.compare import train_one
from cosine_losses.watch import StuckRunWarning

FAMILIES = {
    'numbers': lambda n, seed: mnist_numbers(n_ids=n, per_id=16, seed=seed, size=12, thin=1, shift=3, stretch=False),
    'outfits': lambda n, seed: fashion_outfits(n_ids=n, per_id=16, seed=seed, shift=2),
    'glyphs': lambda n, seed: glyph_identities(n, 16, seed=seed),
    'glyphs-hard': lambda n, seed: glyph_identities(n, 16, seed=seed, rotate=20, shift=.12, noise=10, contrast=60),
}
KEY = ['family', 'loss', 'seed', 'lr', 'bs', 'threads']

class WatchKind(Callback):
    "Keeps the kind of failure `StuckRunWatch` saw ('' if none)"
    def after_fit(self): WatchKind.last = (getattr(self.learn, 'stuck_run_watch', None) and self.learn.stuck_run_watch.stuck or {}).get('kind', '')

def run(family, loss, seed, lr, bs, threads, n_ids, epochs, data, wd=None):
    torch.set_num_threads(threads)
    dls = identity_dls(*data, seen=.7, seed=seed, bs=bs)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', StuckRunWarning)
        r = train_one(dls, loss, epochs, seed, lr, quiet=True, cbs=WatchKind(), **({} if wd is None else dict(wd=wd))).iloc[-1]
    return dict(family=family, loss=loss, seed=seed, lr=lr, bs=bs, threads=threads, seen_acc=100*r.accuracy, map_at_r=100*r.map_at_r,
                flagged=WatchKind.last if r.failed else '', seconds=time.perf_counter() - t)

def judge(df:pd.DataFrame) -> pd.DataFrame:
    "Each run's ratios to softmax under the same family, seed, lr, bs and threads, and whether it failed"
    sm = df[df.loss == 'softmax'].set_index(['family', 'seed', 'lr', 'bs', 'threads'])[['seen_acc', 'map_at_r']].add_suffix('_softmax')
    df = df.join(sm, on=['family', 'seed', 'lr', 'bs', 'threads'])
    df['seen_ratio'],df['map_ratio'] = df.seen_acc/df.seen_acc_softmax,df.map_at_r/df.map_at_r_softmax
    df['failed'] = (df.flagged.fillna('') != '') | ((df.loss != 'softmax') & ((df.seen_ratio < .9) | (df.map_ratio < .9)))
    return df

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--families', nargs='+', default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument('--losses', nargs='+', default=['softmax', 'arcface', 'cosface', 'sphereface', 'combined'])
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--lrs', type=float, nargs='+', default=[3e-2])
    p.add_argument('--bss', type=int, nargs='+', default=[128])
    p.add_argument('--threads', type=int, nargs='+', default=[2])
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--n-ids', type=int, default=1000)
    p.add_argument('--wd', type=float, default=None, help="weight decay of every learner (default: each its own, 0.1 cosine, 0.01 softmax); one --out per value")
    p.add_argument('--out', default='results/robustness/runs.csv')
    a = p.parse_args()
    fastprogress.NO_BAR = True
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(out, keep_default_na=False) if out.exists() else pd.DataFrame(columns=KEY)
    done = set(map(tuple, df[KEY].astype(str).values.tolist()))
    todo = [k for k in itertools.product(a.families, range(a.seeds), a.lrs, a.bss, a.threads, a.losses)
            if tuple(map(str, (k[0], k[5], k[1], k[2], k[3], k[4]))) not in done]
    print(f"{len(todo)} runs to go, {len(df)} done in {out}", flush=True)
    data = {}
    for family,seed,lr,bs,threads,loss in todo:
        if (family, seed) not in data: data = {(family, seed): FAMILIES[family](a.n_ids, seed)}  # one data set in memory at a time
        row = run(family, loss, seed, lr, bs, threads, a.n_ids, a.epochs, data[family, seed], a.wd)
        df = pd.concat([df, pd.DataFrame([row])], ignore_index=True)
        df.to_csv(out, index=False)  # after every run: a killed benchmark keeps what it measured
        print(f"{family} seed {seed} lr {lr:g} bs {bs} threads {threads} {loss:>10}: seen {row['seen_acc']:5.1f} %, MAP@R {row['map_at_r']:5.1f} %"
              f"{', FLAGGED ' + row['flagged'] if row['flagged'] else ''}, {row['seconds']:.0f} s", flush=True)
    df = judge(df.astype({'seed': int, 'lr': float, 'bs': int, 'threads': int, 'seen_acc': float, 'map_at_r': float}))
    g = df.groupby(['family', 'loss'], sort=False)
    summ = g.agg(runs=('failed', 'size'), failed=('failed', 'sum'), seen_acc=('seen_acc', 'mean'), map_at_r=('map_at_r', 'mean'),
                 seen_ratio_min=('seen_ratio', 'min'), map_ratio_min=('map_ratio', 'min')).round(2)
    print(f"\nfit_one_cycle({a.epochs}, lr) over lr {a.lrs}, bs {a.bss}, threads {a.threads}; a run fails if flagged or under 0.9 × softmax:\n")
    print(summ.to_string())
    fails = df[df.failed]
    print(f"\n{len(fails)} failed runs of {len(df)}" + (':\n' + fails[KEY + ['seen_acc', 'map_at_r', 'seen_ratio', 'map_ratio', 'flagged']].round(2).to_string()
                                                    if len(fails) else ''))

if __name__ == '__main__': main()
