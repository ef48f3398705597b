"""The paper's CNN on MNIST: cosine_learner against softmax_learner, side by side in one run.

Prints seconds per epoch of cosine_learner (ArcFace m2=0.5) ÷ softmax_learner (target <= 1.05), and test
accuracy after one-cycle runs of 1, 3 and 5 epochs, 3 seeds each (target: ArcFace >= 99.3 % mean at 5 epochs,
never below softmax by more than 0.05 points). Each (epochs, seed) trains softmax then ArcFace back to back,
so both see the same machine load.

    python benchmarks/paper_cnn.py [--data PATH] [--seeds 3] [--epochs 1 3 5] [--threads 1]
"""
import os, time
import numpy as np, pandas as pd, torch
from typing import Annotated
from fastcore.script import call_parse
from cosine_losses.data import mnist_dls
from cosine_losses.experiments.compare import train_one

@call_parse
def main(data:str=None, # MNIST folder; default $COSINE_LOSSES_MNIST
         seeds:int=3, # seeds per configuration
         epochs:Annotated[int, "one-cycle lengths to train", {'nargs': '+'}]=(1, 3, 5),
         threads:int=1, # torch intra-op threads
         lr:float=3e-2, # maximum learning rate
         bs:int=256, # batch size
         out:str=None): # optional CSV of every epoch
    torch.set_num_threads(threads)
    dls = mnist_dls(data, bs=bs)
    rows = []
    t0 = time.time()
    for e in epochs:
        for seed in range(seeds):
            for loss in ('softmax', 'arcface'):
                r = train_one(dls, loss, e, seed, lr, quiet=True)
                rows.append(r)
                print(f'{loss:8s} epochs={e} seed={seed}: {r.accuracy.iloc[-1]*100:.2f} %  {r.seconds.mean():.1f} s/epoch', flush=True)
    res = pd.concat(rows)
    if out: res.to_csv(out, index=False)
    last = res[res.epoch == res.epochs]
    tab = last.pivot_table(index='epochs', columns='loss', values='accuracy', aggfunc=['mean', 'std'])*100
    print(f'\nMNIST test accuracy %, one-cycle lr={lr}, bs={bs}, {seeds} seeds, torch threads={threads}, {time.time()-t0:.0f} s in all')
    print('epochs | softmax mean ± std | arcface mean ± std | arcface − softmax')
    for e in epochs:
        sm,af = tab.loc[e, ('mean', 'softmax')],tab.loc[e, ('mean', 'arcface')]
        print(f'{e:6d} | {sm:.2f} ± {tab.loc[e, ("std", "softmax")]:.2f} | {af:.2f} ± {tab.loc[e, ("std", "arcface")]:.2f} | {af-sm:+.2f}')
    sec = res.groupby('loss').seconds.median()
    ratio = sec['arcface']/sec['softmax']
    print(f'\nseconds per epoch (median over {len(res)//2} epochs each): softmax {sec["softmax"]:.2f}, cosine {sec["arcface"]:.2f}, ratio {ratio:.3f} (target <= 1.05)')
    e5 = max(epochs)
    af,sm = tab.loc[e5, ('mean', 'arcface')],tab.loc[e5, ('mean', 'softmax')]
    worst = min(tab.loc[e, ('mean', 'arcface')] - tab.loc[e, ('mean', 'softmax')] for e in epochs)
    print(f'ArcFace at {e5} epochs: {af:.2f} % (target >= 99.3): {"met" if af >= 99.3 else "NOT met"}; '
          f'worst ArcFace − softmax gap {worst:+.2f} points (target >= -0.05): {"met" if worst >= -.05 else "NOT met"}; '
          f'time ratio: {"met" if ratio <= 1.05 else "NOT met"}')
