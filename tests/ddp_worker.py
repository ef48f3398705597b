"""Two-process checks run by test_distributed.py: `ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 ddp_worker.py OUT MNIST`.
Each rank saves what it saw and computed to OUT/rank{r}.pt; the test compares them with one process."""
import sys, warnings
from pathlib import Path
import torch, torch.distributed as dist
from fastai.vision.all import *
from fastai.distributed import DistributedDL
from cosine_losses.data import mnist_dls
from cosine_losses.learner import cosine_learner
from cosine_losses.callbacks import AngleStats, MarginScheduler
from cosine_losses.distributed import *

warnings.simplefilter('ignore')
torch.set_num_threads(1)
out,mnist = Path(sys.argv[1]),sys.argv[2]
res = {}

SEEN = []  # (shuffled, indices) of every epoch of a `DistributedDL` on this rank
_get_idxs = DistributedDL.get_idxs
def _record(self):
    idxs = _get_idxs(self)
    SEEN.append((self.dl.shuffle, idxs))
    return idxs
DistributedDL.get_idxs = _record

def flat(model, skip=None): return torch.cat([p.detach().flatten() for p in model.parameters() if p is not skip])

def margins():
    "`sharded_margin_loss` on fixed data: this rank's rows (uneven) and block of C=11 centres, per margin"
    r,w = dist.get_rank(),dist.get_world_size()
    g = torch.Generator().manual_seed(1)
    X,Wc = torch.randn(9, 6, generator=g),torch.randn(11, 6, generator=g)
    Y = torch.tensor([0, 3, 3, 10, 5, 2, 7, 10, 4])  # classes 1, 6, 8 and 9 in no batch
    rows,blk = [slice(0, 5), slice(5, 9)][r],slice(r*11//w, (r+1)*11//w)
    for name,m in dict(arcface=dict(m2=.5), cosface=dict(m2=0., m3=.35), sphereface=dict(m1=1.35, m2=0.),
                       combined=dict(m1=1.2, m2=.3, m3=.2), easy=dict(m2=.5, easy_margin=True),
                       per_class=dict(m2=torch.linspace(0, .6, 11), m3=torch.linspace(.3, 0, 11))).items():
        x,wb = X[rows].clone().requires_grad_(),Wc[blk].clone().requires_grad_()
        loss = sharded_margin_loss(x, Y[rows], wb, s=16., **m)
        loss.backward()
        res[f'margin_{name}'] = (loss.item(), x.grad, wb.grad)
    # an empty rank and a uneven split
    x,wb = X[:0 if r else 9].clone().requires_grad_(),Wc[blk].clone().requires_grad_()
    loss = sharded_margin_loss(x, Y[:0 if r else 9], wb, s=16., m2=.5)
    loss.backward()
    res['margin_empty_rank'] = (loss.item(), x.grad, wb.grad)
    # sampling: 40 classes, 20 a rank; 3 positives; keep 30 % of each block
    g = torch.Generator().manual_seed(2)
    X,Wc,Y = torch.randn(8, 6, generator=g),torch.randn(40, 6, generator=g),torch.tensor([1, 1, 17, 25, 25, 25, 1, 17])
    rows,blk = slice(4*r, 4*r+4),slice(20*r, 20*r+20)
    for i in range(2):
        x,wb = X[rows].clone().requires_grad_(),Wc[blk].clone().requires_grad_()
        loss = sharded_margin_loss(x, Y[rows], wb, s=16., m2=.5, sample_rate=.3, generator=torch.Generator().manual_seed(5+r))
        loss.backward()
        res[f'sampled{i}'] = (loss.item(), x.grad, wb.grad)
    try: sharded_margin_loss(X[rows], Y[rows]+20, Wc[blk], s=16.)
    except ValueError as e: res['bad_targ'] = str(e)

def ddp_step():
    "One backward of a Linear body and a sharded head under DDP, rows split 5/3, centres 3/4"
    from torch.nn.parallel import DistributedDataParallel as DDP
    r = dist.get_rank()
    g = torch.Generator().manual_seed(3)
    X,Wc,Y = torch.randn(8, 5, generator=g),torch.randn(7, 4, generator=g),torch.tensor([0, 6, 2, 2, 5, 1, 6, 3])
    torch.manual_seed(0)
    body,head = torch.nn.Linear(5, 4),ShardedArcFaceHead(4, 7, r, 2)
    with torch.no_grad(): head.weight.copy_(Wc[head.start:head.stop])
    model = torch.nn.Sequential(body, head)
    DDP._set_params_and_buffers_to_ignore_for_model(model, ['1.weight'])
    rows = [slice(0, 5), slice(5, 8)][r]
    ddp = DDP(model)  # kept: its reducer averages the body's gradients during backward
    loss = ShardedMarginLoss(head, s=16., m1=1.1, m2=.3, m3=.1)(ddp(X[rows]), Y[rows])
    loss.backward()
    res['ddp_step'] = (loss.item(), body.weight.grad, body.bias.grad, head.weight.grad)

def fit_plain():
    "`cosine_learner` with our callbacks under `distrib_ctx`"
    dls = mnist_dls(mnist, bs=64, n_train=512, n_valid=301)  # 301: the ranks' shards of the validation set are padded
    set_seed(0)
    learn = cosine_learner(dls, m2=.3, lr=3e-2, cbs=[AngleStats(), MarginScheduler({'m2': SchedLin(0, .3)})])
    with learn.distrib_ctx(): learn.fit_one_cycle(1, 3e-2)
    res['plain'] = dict(seen=SEEN[:], weights=flat(learn.model), state=learn.model.state_dict(), values=learn.recorder.values[-1],
                        names=learn.recorder.metric_names, m2=learn.recorder.hps['m2'],
                        sync_bn=any(isinstance(m, torch.nn.SyncBatchNorm) for m in learn.model.modules()),
                        classes=[type(o).__module__ for o in [*learn.metrics, learn.recorder.loss]])
    SEEN.clear()

def fit_sharded():
    "`sharded_learner` under `distrib_ctx`: fit, validate, predictions gathered, export"
    dls = mnist_dls(mnist, bs=64, n_train=512, n_valid=301)
    set_seed(0)
    learn = sharded_learner(dls, m2=.3, lr=3e-2, n_out=11)  # 11 classes (one never seen): blocks of 5 and 6
    with learn.distrib_ctx():
        learn.fit_one_cycle(1, 3e-2)
        values = list(learn.recorder.values[-1])
        preds,targs = learn.get_preds()
    head = learn.model[-1]
    learn.export(out/'sharded.pkl')
    learn.path = out
    moments = {k: v.clone() for k,v in learn.opt.state[head.weight].items() if isinstance(v, torch.Tensor)}  # Adam's, of this rank's centres
    learn.save('ckpt')  # all C centres and their optimiser state, from rank 0
    block = head.weight.detach().clone()
    with torch.no_grad(): head.weight.zero_()
    learn.load('ckpt', with_opt=False)  # each rank its block again
    res['reloaded'] = torch.equal(head.weight, block)
    learn.load('ckpt')  # and its block of the optimiser state
    res['opt_block'] = moments
    res['opt_reloaded'] = len(moments) > 0 and all(torch.equal(learn.opt.state[head.weight][k], v) for k,v in moments.items())
    res['sharded'] = dict(weights=flat(learn.model, head.weight), block=head.weight.detach().clone(), start=head.start,
                          values=values, preds=preds, targs=targs)

def fit_openset():
    "`OpenSetMetrics` under `distrib_ctx`: the unseen classes' loader is scored whole on every rank"
    from cosine_losses.splits import open_set_dls
    from cosine_losses.openset import OpenSetMetrics
    dls = open_set_dls(mnist_dls(mnist, n_train=512, n_valid=400), seen=5, bs=64)
    set_seed(0)
    learn = cosine_learner(dls, m2=.3, cbs=OpenSetMetrics())
    with learn.distrib_ctx(): learn.fit(1, 1e-3)
    res['openset'] = dict(state=learn.model.state_dict(), values=learn.recorder.values[-1], names=learn.recorder.metric_names)

if __name__ == '__main__':
    dist.init_process_group('gloo')
    margins()
    ddp_step()
    fit_plain()
    fit_sharded()
    fit_openset()
    torch.save(res, out/f'rank{dist.get_rank()}.pt')
