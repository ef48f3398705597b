"""Fits run by test_checkpoint.py: `python checkpoint_worker.py OUT MNIST LOSS [KILL]` (LOSS 'sharded': under torchrun on 2 gloo processes).
A seeded 3-epoch fit with a random augmentation and `Checkpoint(every=...)` in OUT. KILL=n: SIGKILL itself after training batch n, before that
batch's checkpoint; KILL=save:n: SIGKILL itself halfway through writing its n-th checkpoint. A fit that ends writes OUT/final-rank{r}.pt."""
import io, os, random, signal, sys, warnings
from pathlib import Path
import torch, torch.distributed as dist
from fastai.vision.all import Callback, Rotate, SchedLin, set_seed, get_model
from cosine_losses.data import mnist_dls
from cosine_losses.learner import cosine_learner
from cosine_losses.callbacks import MarginScheduler
from cosine_losses.family import CurricularFaceLoss
from cosine_losses.distributed import sharded_learner
from cosine_losses.checkpoint import Checkpoint

warnings.simplefilter('ignore')
torch.set_num_threads(1)
out,mnist,loss = Path(sys.argv[1]),sys.argv[2],sys.argv[3]
kill = sys.argv[4] if len(sys.argv) > 4 else ''

def die(): os.kill(os.getpid(), signal.SIGKILL)

class KillAt(Callback):
    order = Checkpoint.order - 1  # before the checkpoint of the same batch
    def after_batch(self):
        if self.train_iter == int(kill): die()

if kill.startswith('save:'):  # the n-th `torch.save` (all are checkpoints) writes half its bytes, then the process dies
    _save,calls = torch.save,[]
    def dying_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) < int(kill[5:]): return _save(obj, f, *args, **kwargs)
        b = io.BytesIO(); _save(obj, b, *args, **kwargs)
        f.write(b.getvalue()[:len(b.getvalue())//2]); f.flush(); die()
    torch.save = dying_save

if loss == 'compare':  # two runs; KILL=n: die in the second run's epoch 1, after its batch n; OUT/trained.txt: the epochs each process trained
    from cosine_losses.experiments.compare import compare
    class Log(Callback):
        order = Checkpoint.order - 1
        def before_fit(self): self.fits = getattr(self, 'fits', 0) + 1
        def after_batch(self):
            if kill and self.fits == 2 and self.epoch == 1 and self.iter+1 == int(kill): die()
        def after_epoch(self):
            with open(out/'trained.txt', 'a') as f: f.write(f'{os.getpid()} {type(self.loss_func).__name__} {self.epoch}\n')
    dls = mnist_dls(mnist, bs=32, n_train=320, n_valid=64, batch_tfms=[Rotate(max_deg=20, p=1.)])
    compare(dls, ('arcface', 'curricularface'), epochs=3, seeds=1, out=out/'cmp', quiet=True, emb_size=16, cbs=Log())
    sys.exit()
if loss == 'sharded': dist.init_process_group('gloo')
dls = mnist_dls(mnist, bs=32, n_train=320, n_valid=64, batch_tfms=[Rotate(max_deg=20, p=1.)])
set_seed(0, reproducible=True)
for dl in dls.loaders: dl.rng = random.Random(0)
if loss == 'combined': learn = cosine_learner(dls, emb_size=16, m2=.3, m3=.1, cbs=MarginScheduler({'m2': SchedLin(0, .3)}))
elif loss == 'curricularface': learn = cosine_learner(dls, emb_size=16, loss_func=CurricularFaceLoss(s=30.))
else: learn = sharded_learner(dls, emb_size=16, m2=.3, n_out=11, sample_rate=.5)  # blocks of 5 and 6 centres, half of each in a step
learn.path = out
ck = Checkpoint(every=2 if loss == 'sharded' else 4)
cbs = [ck] + ([KillAt()] if kill and not kill.startswith('save:') else [])
with learn.no_bar(), learn.no_logging():
    if loss == 'sharded':
        with learn.distrib_ctx(): learn.fit_one_cycle(3, 3e-2, cbs=cbs)
    else: learn.fit_one_cycle(3, 3e-2, cbs=cbs)
r = dist.get_rank() if dist.is_initialized() else 0
torch.save(dict(model=get_model(learn.model).state_dict(), opt=learn.opt.state_dict(), loss=learn.loss_func.state_dict(),
                gen=getattr(learn.loss_func, '_gen', None) and learn.loss_func._gen.get_state(),
                values=learn.recorder.values, losses=learn.recorder.losses, resumed=ck.resumed), out/f'final-rank{r}.pt')
