"""`compare`'s figures on many identities: softmax and the margin losses at the package's defaults on the hard MNIST
numbers of `benchmarks/many_classes.py` (1,000 numbers, 700 seen; seed 0), with the DET and CMC curves of the unseen
300 and the one-page sheet. `python results/many-classes/compare.py` writes them to results/many-classes/compare/."""
import os; os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch
from pathlib import Path
from cosine_losses.identities import mnist_numbers, identity_dls
from cosine_losses.compare import compare, format_summary

torch.set_num_threads(1)
x,y,names = mnist_numbers(n_ids=1000, per_id=16, digits=3, seed=0, size=12, thin=1, shift=3, stretch=False)
dls = identity_dls(x, y, names, seen=.7, seed=0)
summ = compare(dls, ['softmax', 'arcface', 'cosface', 'combined'], epochs=10, seeds=1, out=Path(__file__).parent/'compare', quiet=True, sheet=True)
print(format_summary(summ))
