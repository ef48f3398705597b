"""CosFace on glyphs-hard at batches of 256 with weight decay 0.1 on the class centres only, then on the body only (0.01 elsewhere):
which part of the model the decay acts on. `python results/robustness/split_decay.py 0` (seeds, comma-separated); rows in remedies.csv."""
import os, sys, warnings; os.environ.setdefault('OMP_NUM_THREADS','1')
import torch; torch.set_num_threads(2)
from fastprogress import fastprogress; fastprogress.NO_BAR=True
from fastai.torch_core import params
from cosine_losses.identities import glyph_identities, identity_dls
from cosine_losses.compare import train_one
from cosine_losses.watch import StuckRunWarning
warnings.simplefilter('ignore', StuckRunWarning)
split = lambda m: [params(m[:-1]), params(m[-1])]
for seed in map(int, sys.argv[1].split(',')):
    data = glyph_identities(1000, 16, seed=seed, rotate=20, shift=.12, noise=10, contrast=60)
    dls = identity_dls(*data, seen=.7, seed=seed, bs=256)
    for name, wd in [('head wd .1', [0.01, 0.1]), ('body wd .1', [0.1, 0.01])]:
        r = train_one(dls, 'cosface', 10, seed, 3e-2, quiet=True, splitter=split, wd=wd)
        print(seed, name, f"seen {100*r.accuracy.iloc[-1]:.1f} MAP@R {100*r.map_at_r.iloc[-1]:.2f} failed {r.failed.iloc[-1]}", flush=True)
