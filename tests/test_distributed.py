"Data-parallel training and sharded class centres, checked on 2 real gloo processes against one process."
import os, signal, subprocess, sys
from pathlib import Path
import pytest, torch
from fastai.vision.all import load_learner, set_seed
from cosine_losses.losses import CombinedMarginLoss
from cosine_losses.heads import ArcFaceHead
from cosine_losses.learner import cosine_learner
from cosine_losses.data import mnist_dls
from cosine_losses.distributed import *

WORKER = str(Path(__file__).parent/'ddp_worker.py')

@pytest.fixture(scope='module')
def ranks(tmp_path_factory, real_mnist):
    "Run ddp_worker.py once on 2 CPU processes (gloo), as the README launches training: what each rank saved"
    out = tmp_path_factory.mktemp('ddp')
    env = {**os.environ, 'ACCELERATE_USE_CPU': '1', 'OMP_NUM_THREADS': '1'}
    # --standalone: a free port for the rendezvous, so runs beside each other do not collide
    p = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', WORKER, str(out), str(real_mnist)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try: o,e = p.communicate(timeout=300)
    except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL); raise
    assert p.returncode == 0, (o + e)[-4000:]
    return out,[torch.load(out/f'rank{r}.pt', weights_only=False) for r in range(2)]

def _reference(X, Wc, Y, s=16., **m):
    "Loss and gradients of features and centres in one process: `ArcFaceHead` + `CombinedMarginLoss`"
    head = ArcFaceHead(X.shape[1], len(Wc))
    head.weight.data = Wc.clone()
    x = X.clone().requires_grad_()
    loss = CombinedMarginLoss(**{'s': s, 'm1': 1., 'm2': 0., 'm3': 0., **m})(head(x), Y)
    loss.backward()
    return loss.item(),x.grad,head.weight.grad

MARGINS = dict(arcface=dict(m2=.5), cosface=dict(m2=0., m3=.35), sphereface=dict(m1=1.35, m2=0.),
               combined=dict(m1=1.2, m2=.3, m3=.2), easy=dict(m2=.5, easy_margin=True),
               per_class=dict(m2=torch.linspace(0, .6, 11), m3=torch.linspace(.3, 0, 11)))

@pytest.mark.parametrize('name', MARGINS)
def test_sharded_loss_equals_one_process(ranks, name):
    _,res = ranks
    g = torch.Generator().manual_seed(1)  # the worker's data: 9 features, C = 11 centres (blocks of 5 and 6), rows split 5/4
    X,Wc = torch.randn(9, 6, generator=g),torch.randn(11, 6, generator=g)
    Y = torch.tensor([0, 3, 3, 10, 5, 2, 7, 10, 4])
    loss,gx,gw = _reference(X, Wc, Y, **MARGINS[name])
    for r,(rows,blk) in enumerate([(slice(0, 5), slice(0, 5)), (slice(5, 9), slice(5, 11))]):
        l,hx,hw = res[r][f'margin_{name}']
        assert l == pytest.approx(loss, rel=1e-5)
        torch.testing.assert_close(hx, gx[rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(hw, gw[blk], rtol=1e-4, atol=1e-6)
    assert (gw[[1, 6, 8, 9]] != 0).all()  # classes in no batch still get the softmax's gradient

def test_sharded_loss_with_an_empty_rank(ranks):
    _,res = ranks
    g = torch.Generator().manual_seed(1)
    X,Wc = torch.randn(9, 6, generator=g),torch.randn(11, 6, generator=g)
    loss,gx,gw = _reference(X, Wc, torch.tensor([0, 3, 3, 10, 5, 2, 7, 10, 4]), m2=.5)
    (l0,hx0,hw0),(l1,hx1,hw1) = res[0]['margin_empty_rank'],res[1]['margin_empty_rank']
    assert l0 == pytest.approx(loss, rel=1e-5) and l1 == pytest.approx(loss, rel=1e-5)
    assert hx1.shape == (0, 6)
    torch.testing.assert_close(hx0, gx, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.cat([hw0, hw1]), gw, rtol=1e-4, atol=1e-6)

def test_sampled_centres(ranks):
    _,res = ranks
    g = torch.Generator().manual_seed(2)
    X,Wc,Y = torch.randn(8, 6, generator=g),torch.randn(40, 6, generator=g),torch.tensor([1, 1, 17, 25, 25, 25, 1, 17])
    kept = [torch.nonzero(res[r]['sampled0'][2].abs().sum(1))[:,0] + 20*r for r in range(2)]  # rows with a gradient
    for r in range(2):
        torch.testing.assert_close(res[r]['sampled0'][2], res[r]['sampled1'][2])  # seeded: the same draw again
        assert len(kept[r]) == 6  # ceil(0.3·20) of each block of 20
        assert res[r]['sampled0'][2][~torch.isin(torch.arange(20*r, 20*r+20), kept[r]) .nonzero()[:,0]].abs().sum() == 0
    kept = torch.cat(kept)
    assert set(Y.tolist()) <= set(kept.tolist())  # positives always kept
    # the loss and gradients are those of one process over the kept classes only
    loss,gx,gw = _reference(X, Wc[kept], torch.searchsorted(kept, Y), m2=.5)
    for r in range(2):
        l,hx,hw = res[r]['sampled0']
        assert l == pytest.approx(loss, rel=1e-5)
        torch.testing.assert_close(hx, gx[4*r:4*r+4], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(hw[kept[(kept >= 20*r) & (kept < 20*r+20)] - 20*r], gw[(kept >= 20*r) & (kept < 20*r+20)], rtol=1e-4, atol=1e-6)

def test_bad_targets_are_a_clear_error(ranks):
    _,res = ranks
    assert all('[0, 40)' in res[r]['bad_targ'] for r in range(2))
    with pytest.raises(ValueError, match='sample_rate'): sharded_margin_loss(torch.randn(2, 3), torch.tensor([0, 1]), torch.randn(4, 3), sample_rate=0)
    with pytest.raises(ValueError, match='`m2`'): sharded_margin_loss(torch.randn(2, 3), torch.tensor([0, 1]), torch.randn(4, 3), m2=-1)
    with pytest.raises(ValueError, match='4 margins'): sharded_margin_loss(torch.randn(2, 3), torch.tensor([0, 1]), torch.randn(4, 3), m3=torch.zeros(3))

def test_one_process_is_the_plain_loss():
    "Without a process group, one rank holds every centre: `sharded_margin_loss` is `CombinedMarginLoss`, sampling aside"
    X,Wc,Y = torch.randn(7, 5),torch.randn(9, 5),torch.randint(0, 9, (7,))
    loss,gx,gw = _reference(X, Wc, Y, s=30., m1=1.1, m2=.2, m3=.1)
    x,w = X.clone().requires_grad_(),Wc.clone().requires_grad_()
    l = sharded_margin_loss(x, Y, w, s=30., m1=1.1, m2=.2, m3=.1)
    l.backward()
    assert l.item() == pytest.approx(loss, rel=1e-6)
    torch.testing.assert_close(x.grad, gx); torch.testing.assert_close(w.grad, gw)

def test_sharded_loss_under_ddp_gives_the_global_batch_gradient(ranks):
    "DDP averages the body's gradients over ranks; ShardedMarginLoss scales so the average is one process's on the whole batch"
    _,res = ranks
    g = torch.Generator().manual_seed(3)
    X,Wc,Y = torch.randn(8, 5, generator=g),torch.randn(7, 4, generator=g),torch.tensor([0, 6, 2, 2, 5, 1, 6, 3])
    torch.manual_seed(0)
    body,head = torch.nn.Linear(5, 4),ArcFaceHead(4, 7)
    head.weight.data = Wc.clone()
    loss = CombinedMarginLoss(s=16., m1=1.1, m2=.3, m3=.1)(head(body(X)), Y)
    loss.backward()
    for r,blk in enumerate([slice(0, 3), slice(3, 7)]):
        l,gw,gb,gc = res[r]['ddp_step']
        assert l == pytest.approx(loss.item(), rel=1e-5)
        torch.testing.assert_close(gw, body.weight.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gb, body.bias.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gc, head.weight.grad[blk], rtol=1e-4, atol=1e-6)

def test_ddp_fit_disjoint_shards_identical_weights(ranks):
    _,res = ranks
    a,b = res[0]['plain'],res[1]['plain']
    (sh0,tr0),(sh1,tr1) = a['seen'][0],b['seen'][0]  # the first epoch's training indices
    assert sh0 and sh1 and not set(tr0) & set(tr1) and sorted(tr0 + tr1) == list(range(512))
    torch.testing.assert_close(a['weights'], b['weights'], rtol=0, atol=0)
    assert a['values'] == b['values']  # both ranks report the same figures
    assert not a['sync_bn']  # on CPUs distrib_ctx keeps BatchNorm: SyncBatchNorm has no CPU kernel
    assert a['classes'] == ['fastai.learner']*2  # after the fit, fastai's own `AvgMetric` and `AvgLoss` again (the exact ones are for the fit)
    assert a['m2'] == b['m2'] == pytest.approx([0, .075, .15, .225])  # MarginScheduler: SchedLin(0, .3) over 4 batches, alike on both

def test_ddp_metrics_are_on_the_whole_validation_set(ranks, real_mnist):
    "valid_loss, accuracy, θ_y and θ_nearest of the 2-process fit equal one process's on the same weights, though 301 items split unevenly"
    _,res = ranks
    dls = mnist_dls(real_mnist, bs=64, n_train=512, n_valid=301)
    from cosine_losses.callbacks import AngleStats
    learn = cosine_learner(dls, m2=.3, cbs=AngleStats())
    learn.model.load_state_dict(res[0]['plain']['state'])
    learn.loss_func.m2 = res[0]['plain']['m2'][-1]
    vals = learn.validate()
    names = res[0]['plain']['names']
    assert names[2:6] == ['valid_loss', 'accuracy', 'theta_target', 'theta_nearest']
    assert [float(v) for v in res[0]['plain']['values'][1:5]] == pytest.approx([float(v) for v in vals], rel=1e-5)

def test_sharded_learner_fit_preds_export(ranks, real_mnist):
    out,res = ranks
    a,b = res[0]['sharded'],res[1]['sharded']
    torch.testing.assert_close(a['weights'], b['weights'], rtol=0, atol=0)  # the body: identical on both ranks
    assert (a['start'],len(a['block']),b['start'],len(b['block'])) == (0, 5, 5, 6)
    learn = load_learner(out/'sharded.pkl')  # a plain single-process learner
    head = learn.model[-1]
    assert type(head) is ArcFaceHead and head.weight.shape == (11, 128) and type(learn.loss_func) is CombinedMarginLoss
    torch.testing.assert_close(head.weight.data, torch.cat([a['block'], b['block']]), rtol=0, atol=0)
    assert res[0]['reloaded'] and res[1]['reloaded']  # `save` wrote all C centres, `load` gave each rank its block back
    assert res[0]['opt_reloaded'] and res[1]['opt_reloaded']  # and each rank its block of the optimiser state
    from cosine_losses.learner import _safe_load
    state = _safe_load(out/'models'/'ckpt.pth', 'cpu')
    torch.testing.assert_close(state['model'][f'{len(learn.model)-1}.weight'], head.weight.data, rtol=0, atol=0)
    saved = state['opt']['state'][-1]  # the head's weight, the model's last parameter: the moments of all C centres
    assert set(res[0]['opt_block']) == {'grad_avg', 'sqr_avg'}
    for k in 'grad_avg','sqr_avg': torch.testing.assert_close(saved[k], torch.cat([res[0]['opt_block'][k], res[1]['opt_block'][k]]), rtol=0, atol=0)
    dls = mnist_dls(real_mnist, bs=64, n_train=512, n_valid=301)
    one = sharded_learner(dls, n_out=11, path=out)  # one process: the checkpoint of 2 loads whole
    torch.testing.assert_close(one.load('ckpt', with_opt=False).model[-1].weight.data, head.weight.data, rtol=0, atol=0)
    preds,targs = learn.get_preds(dl=dls.valid)
    # under distrib_ctx fastai gathers each batch from both ranks: rank 0's items 0…150, rank 1's 151…300 (and a repeat, dropped)
    order = [j for i in range(3) for r in range(2) for j in range(151*r + 64*i, min(151*r + 64*i + 64, 151*r + 151)) if j < 301]
    assert sorted(order) == list(range(301))
    for r in res:  # every item once, gathered across the ranks
        torch.testing.assert_close(r['sharded']['preds'], preds[order], rtol=1e-4, atol=1e-5)
        assert (r['sharded']['targs'] == targs[order]).all()
    acc = (preds.argmax(1) == targs).float().mean().item()
    assert a['values'] == b['values'] and float(a['values'][2]) == pytest.approx(acc, abs=1e-6)  # train_loss, valid_loss, accuracy
    assert float(a['values'][1]) == pytest.approx(float(learn.validate(dl=dls.valid)[0]), rel=1e-5)

def test_sharded_head_errors():
    with pytest.raises(ValueError, match='`rank`'): ShardedArcFaceHead(4, 10, rank=2, world_size=2)
    with pytest.raises(ValueError, match='`n_out`'): ShardedArcFaceHead(4, 0)
    h = ShardedArcFaceHead(4, 10, rank=1, world_size=2)
    assert (h.start, h.stop, h.weight.shape) == (5, 10, (5, 4))
    with pytest.raises(RuntimeError, match='unsharded'): h(torch.randn(3, 4))  # block 1 of 2, but there is one process

def test_openset_metrics_score_every_unseen_item(ranks, real_mnist):
    "distrib_ctx shards train and valid only: each rank scores the whole unseen set, as one process does with the same weights"
    from cosine_losses.splits import open_set_dls
    from cosine_losses.openset import open_set_metrics, embed
    _,res = ranks
    a,b = res[0]['openset'],res[1]['openset']
    assert [float(v) for v in a['values']] == pytest.approx([float(v) for v in b['values']], nan_ok=True)
    dls = open_set_dls(mnist_dls(real_mnist, n_train=512, n_valid=400), seen=5, bs=64)
    learn = cosine_learner(dls, m2=.3)
    learn.model.load_state_dict(a['state'])
    scores = open_set_metrics(*embed(learn.model, dls.unseen))
    keys = a['names'][-5:-1]  # the columns before 'time'
    assert keys == ['precision_at_1', 'map_at_r', 'tar_at_far_1e-3', 'roc_auc']
    assert [float(v) for v in a['values'][-4:]] == pytest.approx([scores[k] for k in keys], rel=1e-5, nan_ok=True)
