"""What a margin loss does on many identities with few images each: per-batch loss, target and nearest-other cosines,
the angle θ_y, feature and centre norms, gradient norms per layer, and the mean cosine between a batch's embeddings.

    python results/many-classes/diagnose.py      # writes results/many-classes/diag.csv (about 10 minutes on one core)

Data as benchmarks/many_classes.py 'hard' (700 seen three-digit numbers, 12 training images each), seed 0;
`fit_one_cycle(10, 3e-2)`. Runs: the old default (ArcFace s = 30 from the start), the same at s = 10, the new default
(s = 'auto' = 10 for 700 classes, margins ramped over the first 30 %), and the old default with the margins ramped."""
import os, sys, warnings
os.environ.setdefault('OMP_NUM_THREADS', '1')
from pathlib import Path
import pandas as pd, torch, torch.nn.functional as F
from fastai.vision.all import Callback, set_seed
from cosine_losses.identities import mnist_numbers, identity_dls
from cosine_losses.learner import cosine_learner
from cosine_losses.watch import StuckRunWarning

RUNS = {'s=30, no warmup (old default)': dict(s=30., warmup=0.), 's=10, no warmup': dict(s=10., warmup=0.),
        "s='auto', warmup 0.3 (new default)": dict(), 's=30, warmup 0.3': dict(s=30.)}

class Diagnose(Callback):
    "One row per training batch of what the loss, the features and the centres do"
    order = 100
    def before_fit(self):
        self.rows,self.h = [],self.learn.model[-1].register_forward_pre_hook(lambda m,i: setattr(self, 'feats', i[0].detach()))
    def after_fit(self): self.h.remove()
    def after_backward(self):
        if not self.training: return
        m,cos,y = self.learn.model,self.pred.detach(),self.yb[0]
        tc = cos.gather(1, y[:,None])[:,0]
        f = F.normalize(self.feats, dim=1)
        gn = lambda mod: torch.sqrt(sum((p.grad**2).sum() for p in mod.parameters() if p.grad is not None)).item()
        self.rows.append(dict(iter=self.train_iter, epoch=self.epoch + self.iter/self.n_iter, loss=self.loss.item(), m2=float(self.loss_func.m2),
            cos_target=tc.mean().item(), cos_nearest_other=cos.scatter(1, y[:,None], -2.).amax(1).mean().item(),
            theta_target=torch.rad2deg(torch.acos(tc.clamp(-1, 1))).mean().item(), accuracy=(cos.argmax(1) == y).float().mean().item(),
            feature_norm=self.feats.norm(dim=1).mean().item(), centre_norm=m[-1].weight.norm(dim=1).mean().item(),
            pair_cosine=((f.sum(0)**2).sum().item() - len(f))/(len(f)*(len(f) - 1)), lr=self.opt.hypers[-1]['lr'],
            **{f'grad_{n}': gn(l) for n,l in [('conv1', m[0][0]), ('conv4', m[0][-1]), ('embedding', m[1]), ('centres', m[-1])]}))

def main(out=Path(__file__).parent/'diag.csv'):
    x,y,names = mnist_numbers(n_ids=1000, per_id=16, digits=3, seed=0, size=12, thin=1, shift=3, stretch=False)
    dls = identity_dls(x, y, names, seen=.7, seed=0)
    res = []
    for name,kw in RUNS.items():
        set_seed(0, reproducible=True)
        learn,d = cosine_learner(dls, m2=.5, **kw),Diagnose()
        with warnings.catch_warnings(), learn.no_bar(), learn.no_logging():
            warnings.simplefilter('ignore', StuckRunWarning)
            learn.fit_one_cycle(10, 3e-2, cbs=d)
        acc = learn.validate()[1]
        print(f"{name}: seen accuracy {acc:.2%}, stuck: {learn.stuck_run_watch.stuck}", flush=True)
        res.append(pd.DataFrame(d.rows).assign(run=name, valid_accuracy=acc))
    pd.concat(res).to_csv(out, index=False, float_format='%.5g')
    print(f"wrote {out}")

if __name__ == '__main__': main()
