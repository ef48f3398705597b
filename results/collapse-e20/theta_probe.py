"""How often does training visit θ_y > π − m2, where a loss without the fallback is not monotone? (m2 = 0.59, no fallback, full MNIST, 20 epochs)

Run from the repository root: `python results/collapse-e20/theta_probe.py > results/collapse-e20/theta_probe.txt`"""
import math, torch
from fastai.vision.all import *
from cosine_losses.data import mnist_dls
from cosine_losses.compare import make_learner
class ThetaProbe(Callback):
    def before_fit(self): self.mx,self.n_past,self.n = 0.,0,0
    def after_loss(self):
        if not self.training: return
        cos = self.pred.detach().float().gather(1, self.yb[0][:,None]).clamp(-1, 1)
        th = torch.acos(cos)
        self.mx = max(self.mx, th.max().item()); self.n_past += (th > math.pi - .59).sum().item(); self.n += len(th)
dls = mnist_dls(bs=256)
set_seed(0, reproducible=True)
learn = make_learner(dls, 'm2=0.59,fallback=0')
p = ThetaProbe()
with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(20, 3e-2, cbs=p)
print(f"max θ_y over all training batches of a 20-epoch run: {math.degrees(p.mx):.1f}°; samples past π − m2 = {math.degrees(math.pi-.59):.1f}°: {p.n_past} of {p.n:,}; final accuracy {learn.validate()[1]:.4f}")
