"A sweep worker on synthetic data, run as a separate process by test_sweep.py: `python sweep_worker.py DB SEEDS SLEEP`"
import sys, time, torch
from fastai.callback.core import Callback
from cosine_losses.data import tensor_dls
from cosine_losses.sweep import margin_sweep, product_grid

def synthetic_dls(n=192, seed=0):
    "8×8 uint8 images labelled by which of 3 bands is bright"
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randint(0, 60, (n, 8, 8), generator=g, dtype=torch.uint8)
    for i,c in enumerate(y.tolist()): x[i, :, c*2+1:c*2+3] = 250
    k = n*3//4
    return tensor_dls(x[:k], y[:k], x[k:], y[k:], bs=32)

GRID = product_grid(m2=(.2, .5))

class Slow(Callback):
    "Stretch each run so a test can kill the worker mid-run"
    def __init__(self, secs): self.secs = secs
    def after_batch(self): time.sleep(self.secs)

if __name__ == '__main__':
    torch.set_num_threads(1)
    db,seeds,secs = sys.argv[1],int(sys.argv[2]),float(sys.argv[3])
    margin_sweep(synthetic_dls(), GRID, seeds=seeds, epochs=1, storage=db, study_name='t', heartbeat=1, grace=3, poll=.5,
                 emb_size=8, cbs=Slow(secs) if secs else None)
