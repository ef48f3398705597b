"""A run that generalises against one that memorises, batch by batch: training loss and margin-free accuracy, θ_y and the
nearest other angle, feature and centre norms, the margin and learning-rate schedules, and each epoch's validation accuracy.

    python results/robustness/diagnose.py      # writes results/robustness/diag.csv (about 5 minutes on two cores)

Data: `glyph_identities` 'glyphs-hard' of benchmarks/robustness.py, seed 0 (700 seen codes, 12 training images each).
Runs: CosFace and softmax at `cosine_learner`'s / `softmax_learner`'s defaults, `fit_one_cycle(10, lr)` at lr 3e-2 and 1e-2."""
import os, warnings
os.environ.setdefault('OMP_NUM_THREADS', '2')
from pathlib import Path
import pandas as pd, torch, torch.nn.functional as F
from fastai.callback.core import Callback
from fastprogress import fastprogress
from cosine_losses.identities import glyph_identities, identity_dls
from cosine_losses.compare import train_one
from cosine_losses.watch import StuckRunWarning

class Diagnose(Callback):
    "One row per training batch; the validation accuracy of each epoch is added to its rows"
    order = 100
    def before_fit(self):
        self.rows,self.h = [],self.learn.model[-1].register_forward_pre_hook(lambda m,i: setattr(self, 'feats', i[0].detach()))
    def after_fit(self): self.h.remove()
    def after_batch(self):
        if not self.training: return
        out,y,lf = self.pred.detach().float(),self.yb[0],self.learn.loss_func
        cos = F.normalize(self.feats, dim=1) @ F.normalize(self.learn.model[-1].weight.detach(), dim=1).T  # the softmax head's angles too
        tc = cos.gather(1, y[:,None])[:,0]
        self.rows.append(dict(epoch=self.epoch + self.iter/self.n_iter, lr=self.opt.hypers[-1]['lr'], loss=self.loss.item(),
            accuracy=(out.argmax(1) == y).float().mean().item(), theta_target=torch.rad2deg(torch.acos(tc.clamp(-1, 1))).mean().item(),
            theta_nearest_other=torch.rad2deg(torch.acos(cos.scatter(1, y[:,None], -2.).amax(1).clamp(-1, 1))).mean().item(),
            feature_norm=self.feats.norm(dim=1).mean().item(), centre_norm=self.learn.model[-1].weight.norm(dim=1).mean().item(),
            m3=float(getattr(lf, 'm3', 0.))))

def main(out=Path(__file__).parent/'diag.csv'):
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    fastprogress.NO_BAR = True
    data = glyph_identities(1000, 16, seed=0, rotate=20, shift=.12, noise=10, contrast=60)  # 'glyphs-hard' of benchmarks/robustness.py
    dls = identity_dls(*data, seen=.7, seed=0)
    runs = []
    for loss in 'cosface','softmax':
        for lr in 3e-2,1e-2:
            d = Diagnose()
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', StuckRunWarning)
                r = train_one(dls, loss, 10, 0, lr, quiet=True, cbs=d)
            df = pd.DataFrame(d.rows).assign(run=f'{loss}, lr {lr:g}', flagged=bool(r.failed.iloc[-1]))
            df['valid_accuracy'] = df.epoch.astype(int).map(r.set_index(r.epoch - 1).accuracy)
            runs.append(df)
            print(f"{loss} lr {lr:g}: validation accuracy by epoch {(100*r.accuracy).round(1).tolist()}, flagged {r.failed.iloc[-1]}", flush=True)
    pd.concat(runs).to_csv(out, index=False, float_format='%.5g')

if __name__ == '__main__': main()
