"A sweep worker on synthetic data, run as a separate process by the sweep tests: `python sweep_worker.py DB SEEDS SLEEP [STALL [NTH]]`"
import sys, time, torch
from pathlib import Path
from fastai.callback.core import Callback
from cosine_losses.data import tensor_dls
from cosine_losses.experiments.sweep import margin_sweep, product_grid

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
    "Stretch each run; with `stall`, touch that file in its `nth` run and hang there, so a test kills the worker surely mid-run"
    def __init__(self, secs, stall=None, nth=1): self.secs,self.stall,self.nth,self.runs = secs,stall,nth,0
    def before_fit(self): self.runs += 1
    def after_batch(self):
        if self.stall and self.runs == self.nth:
            Path(self.stall).touch()
            while True: time.sleep(.1)
        time.sleep(self.secs)

if __name__ == '__main__':
    torch.set_num_threads(1)
    db,seeds,secs = sys.argv[1],int(sys.argv[2]),float(sys.argv[3])
    stall,nth = (sys.argv[4:] or [None])[0],int((sys.argv[5:] or [1])[0])
    margin_sweep(synthetic_dls(), GRID, seeds=seeds, epochs=1, storage=db, study_name='t', heartbeat=1, grace=3, poll=.5,
                 emb_size=8, cbs=Slow(secs, stall, nth) if secs or stall else None)
