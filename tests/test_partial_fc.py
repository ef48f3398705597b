"""Partial FC in one process and the fused head + loss in `cosine_learner` (`HeadTraining`), against today's path and hand-built references."""
import warnings
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastai.vision.all import set_seed, Callback, CancelFitException, OptimWrapper, Adam, load_learner, partial, GradientClip, GradientAccumulation
from cosine_losses.learner import cosine_learner, HeadTraining, _predicted
import cosine_losses.learner as learner_mod
from cosine_losses.heads import sample_centres
from cosine_losses.losses import margin_logits
from cosine_losses.family import AdaFaceLoss
from cosine_losses.checkpoint import Checkpoint
from cosine_losses.watch import StuckRunWatch
from cosine_losses.callbacks import Autocast
from cosine_losses.data import tensor_dls

C = 40


def blocks(n, seed):
    "12×12 uint8 noise with a bright 3×3 square whose place (one of 40) is the label"
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    x = torch.randint(0, 60, (n, 12, 12), generator=g, dtype=torch.uint8)
    for i,c in enumerate(y.tolist()): x[i, c//8*2:c//8*2+3, c%8:c%8+3] += 150
    return x, y


def make_dls(): return tensor_dls(*blocks(256, 0), *blocks(64, 1), bs=32)


def fit(epochs=2, cbs=None, path=None, **kw):
    "A learner fitted from seed 0 on fresh loaders (a loader's shuffle draws from its own RNG)"
    set_seed(0, reproducible=True)
    learn = cosine_learner(make_dls(), emb_size=16, cbs=cbs, path=path, **kw)
    with learn.no_bar(), learn.no_logging(): learn.fit(epochs, 1e-2)
    return learn


def head_w(learn): return learn.model[-1].weight.detach()


def test_keep_all_is_todays_step():
    "A rate that keeps every class goes through the gathered parameter and the optimiser swap: bit-identical to no sampling"
    a,b = fit(),fit(sample_rate=.999)
    assert any(isinstance(cb, HeadTraining) for cb in b.cbs) and not any(isinstance(cb, HeadTraining) for cb in a.cbs)
    assert torch.equal(head_w(a), head_w(b))
    for p,q in zip(a.model.parameters(), b.model.parameters()): assert torch.equal(p, q)
    sa,sb = a.opt.state[a.model[-1].weight],b.opt.state[b.model[-1].weight]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k] for k in sa)
    assert a.recorder.values == b.recorder.values


class Spy(Callback):
    "Keeps the first training step's head input, targets, centres, generator state and loss, then stops the fit"
    order = 30
    def before_batch(self):
        h = self.model[-1]
        self.w0,self.rng0 = h.weight.detach().clone(),(h.rng.clone() if h.sample_rate < 1 else None)
        self.hook = h.register_forward_pre_hook(lambda m,i: setattr(self, 'feats', i[0].detach().clone()))
    def after_loss(self): self.loss_v,self.targ = self.learn.loss.item(),self.yb[0].clone()
    def after_batch(self): self.hook.remove(); raise CancelFitException


@pytest.mark.parametrize("fused", [False, True])
def test_sampled_step_against_reference(fused):
    "The loss is the full loss on the sampled columns only; the sampled rows take fastai's Adam step on that loss, the others nothing"
    spy = Spy()
    learn = fit(1, cbs=spy, sample_rate=.6, fused=fused, m2=.3, s=16., warmup=0)
    g = torch.Generator()
    g.set_state(spy.rng0)
    keep = sample_centres(spy.targ, C, .6, g)
    assert len(keep) == 24 and torch.isin(spy.targ, keep).all()
    P = nn.Parameter(spy.w0[keep].clone())
    cos = F.normalize(spy.feats, dim=1) @ F.normalize(P, dim=1).T  # the reference: only the sampled columns
    loss = F.cross_entropy(margin_logits(cos, torch.searchsorted(keep, spy.targ), s=16., m2=.3), torch.searchsorted(keep, spy.targ))
    assert spy.loss_v == pytest.approx(loss.item(), rel=1e-6)
    loss.backward()
    hyp = learn.opt.hypers[-1]
    ref = Adam([P], **{k: hyp[k] for k in ('lr', 'mom', 'sqr_mom', 'eps', 'wd')})
    ref.step()
    w1 = head_w(learn)
    torch.testing.assert_close(w1[keep], P.detach(), rtol=0, atol=2e-6)
    out = torch.ones(C, dtype=torch.bool)
    out[keep] = False
    assert torch.equal(w1[out], spy.w0[out])  # no gradient, no weight decay
    st = learn.opt.state[learn.model[-1].weight]
    for k in ('grad_avg', 'sqr_avg'):
        assert st[k].shape == (C, 16) and not st[k][out].any() and st[k][keep].abs().sum() > 0
        torch.testing.assert_close(st[k][keep], ref.state[P][k], rtol=0, atol=1e-7)


def test_seed_reproduces_and_sets_the_draws():
    a,b,c = fit(1, sample_rate=.7),fit(1, sample_rate=.7),fit(1, sample_rate=.7, seed=1)  # about 21 classes a batch of 32: 7 negatives drawn
    assert torch.equal(head_w(a), head_w(b)) and torch.equal(a.model[-1].rng, b.model[-1].rng)
    assert not torch.equal(head_w(a), head_w(c))


class Kill(Callback):
    "An error (not a fastai cancellation) after batch `at` of epoch `epoch`, as a killed process stops"
    order = 101  # after `Checkpoint` has saved
    def __init__(self, epoch, at): self.epoch_,self.at = epoch,at
    def after_batch(self):
        if self.training and self.epoch == self.epoch_ and self.iter == self.at: raise KeyboardInterrupt


@pytest.mark.parametrize("fused", [False, True])
def test_resume_mid_epoch_bit_identical(fused, tmp_path):
    "Checkpointed every 2 batches, stopped mid-epoch, fitted again: the weights, the optimiser state and the generator of one uninterrupted run"
    whole = fit(3, sample_rate=.3, fused=fused)
    with pytest.raises(KeyboardInterrupt): fit(3, cbs=[Checkpoint(every=2), Kill(1, 4)], path=tmp_path, sample_rate=.3, fused=fused)
    resumed = fit(3, cbs=Checkpoint(every=2), path=tmp_path, sample_rate=.3, fused=fused)
    assert resumed.cbs.filter(lambda cb: isinstance(cb, Checkpoint))[0].resumed == 12  # 8 batches an epoch: the save after 4 of epoch 1
    for p,q in zip(whole.model.parameters(), resumed.model.parameters()): assert torch.equal(p, q)
    assert torch.equal(whole.model[-1].rng, resumed.model[-1].rng)
    sw,sr = whole.opt.state[whole.model[-1].weight],resumed.opt.state[resumed.model[-1].weight]
    assert all(torch.equal(sw[k], sr[k]) for k in ('grad_avg', 'sqr_avg'))


def test_save_load_carries_the_generator(tmp_path):
    a = fit(1, sample_rate=.2, path=tmp_path)
    a.save('pfc')
    b = cosine_learner(make_dls(), emb_size=16, sample_rate=.2, path=tmp_path).load('pfc')
    assert torch.equal(a.model[-1].rng, b.model[-1].rng) and not torch.equal(b.model[-1].rng, cosine_learner(make_dls(), sample_rate=.2).model[-1].rng)
    assert torch.equal(head_w(a), head_w(b))


@pytest.mark.parametrize("kw", [dict(), dict(sample_rate=.3), dict(k=2, sample_rate=.3), dict(m2='dynamic', sample_rate=.3)])
def test_fused_learner_is_the_unfused(kw):
    "fused=True and fused=False (Partial FC, sub-centres, per-class margins too): the same losses, metrics and weights to float32 tolerance"
    a,b = fit(fused=False, **kw),fit(fused=True, **kw)
    assert a.fused is False and b.fused is True
    torch.testing.assert_close(torch.tensor(a.recorder.values, dtype=torch.float64), torch.tensor(b.recorder.values, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    for p,q in zip(a.model.parameters(), b.model.parameters()): torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    wa,wb = [next(cb for cb in l.cbs if isinstance(cb, StuckRunWatch)) for l in (a, b)]
    torch.testing.assert_close(wa.sums, wb.sums, rtol=1e-5, atol=1e-5)  # the watch's training accuracy from the stand-in's argmax
    pa,pb = a.get_preds(),b.get_preds()
    assert pb[0].shape == (64, C)  # every class outside training
    torch.testing.assert_close(pa[0], pb[0], rtol=1e-4, atol=1e-5)


def test_fused_without_any_callback_is_todays():
    "fused=False at rate 1 adds nothing: today's head and loss"
    learn = cosine_learner(make_dls(), emb_size=16, fused=False)
    assert not any(isinstance(cb, HeadTraining) for cb in learn.cbs) and learn.sample_rate == 1


def test_fused_export_predict_onnx(tmp_path):
    "A fused, sampled learner exports and predicts as any other; its model in ONNX gives the head's cosines to every class"
    learn = fit(1, fused=True, sample_rate=.5, path=tmp_path)
    x = make_dls().valid_ds.items.imgs[:1].clone()[0]
    want = learn.predict(x)
    learn.export('fused.pkl')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        back = load_learner(tmp_path/'fused.pkl')
    got = back.predict(x)
    assert got[0] == want[0] and torch.allclose(got[2], want[2])
    torch.testing.assert_close(back.get_preds(dl=learn.dls.valid)[0], learn.get_preds()[0])
    import onnxruntime as ort
    xb = make_dls().valid.one_batch()[0][:4].as_subclass(torch.Tensor).float()
    model = learn.model.eval()
    with torch.no_grad(): ref = model(xb).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (xb,), tmp_path/'m.onnx', dynamo=False, input_names=['x'], output_names=['cos'])
    sess = ort.InferenceSession(str(tmp_path/'m.onnx'), providers=['CPUExecutionProvider'])
    got = sess.run(None, {'x': xb.numpy()})[0]
    assert got.shape == (4, C) and abs(got - ref).max() < 1e-5


def test_auto_switch(monkeypatch):
    "fused=None: on for `CombinedMarginLoss` from `_FUSED_FROM` classes, off below and for losses with their own forward"
    assert cosine_learner(make_dls(), emb_size=8).fused is False
    monkeypatch.setattr(learner_mod, '_FUSED_FROM', C)
    on = cosine_learner(make_dls(), emb_size=8)
    assert on.fused is True and any(isinstance(cb, HeadTraining) and cb.fused for cb in on.cbs)
    assert cosine_learner(make_dls(), emb_size=8, loss_func=AdaFaceLoss()).fused is False


def test_standin_for_the_cosines():
    p = _predicted(torch.tensor([3, 0, 7]), 10)
    assert p.shape == (3, 10) and len(p) == 3 and p.device.type == 'cpu'
    assert torch.equal(p.argmax(1), torch.tensor([3, 0, 7])) and torch.equal(p.argmax(dim=-1), torch.tensor([3, 0, 7]))
    with pytest.raises(RuntimeError, match='argmax'): p.softmax(1)
    with pytest.raises(RuntimeError, match='argmax'): p.sum()


def test_bad_input():
    with pytest.raises(ValueError, match='sample_rate'): cosine_learner(make_dls(), sample_rate=0)
    with pytest.raises(ValueError, match='sample_rate'): cosine_learner(make_dls(), sample_rate=1.5)
    with pytest.raises(TypeError, match='AdaFaceLoss'): cosine_learner(make_dls(), loss_func=AdaFaceLoss(), fused=True)
    learn = cosine_learner(make_dls(), emb_size=8, sample_rate=.5, opt_func=partial(OptimWrapper, opt=torch.optim.Adam))
    w = head_w(learn).clone()
    with pytest.raises(TypeError, match='fastai `Optimizer`'), learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert torch.equal(head_w(learn), w)  # refused before any step


@pytest.mark.parametrize("kw", [dict(fused=True), dict(sample_rate=.999), dict(fused=True, sample_rate=.999)])
def test_gradient_clip_sees_the_centres(kw):
    "`GradientClip` clips the norm of every gradient, the centres' too, whether fused or gathered (a rate that keeps all 40): as today's step"
    ref,got = fit(1, cbs=GradientClip(.05)),fit(1, cbs=GradientClip(.05), **kw)
    assert not torch.allclose(head_w(ref), head_w(fit(1)), atol=1e-3)  # the clip binds
    for p,q in zip(ref.model.parameters(), got.model.parameters()): torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert not hasattr(got.model[-1], 'sampled') and len(list(got.model.parameters())) == len(list(ref.model.parameters()))


def test_gradient_accumulation_fused():
    "`GradientAccumulation` over two batches of 32 with the fused step: the weights of the step apart, and loss values fastai can scale"
    ref,got = fit(1, cbs=GradientAccumulation(64)),fit(1, cbs=GradientAccumulation(64), fused=True)
    assert not torch.allclose(head_w(ref), head_w(fit(1)), atol=1e-3)  # half the steps
    for p,q in zip(ref.model.parameters(), got.model.parameters()): torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(ref.recorder.values), torch.tensor(got.recorder.values), rtol=1e-5, atol=1e-6)


def test_partial_fc_refuses_gradient_accumulation():
    "The sampled centres change every batch: accumulating across batches would drop their gradients, so the fit is refused before any step"
    learn = cosine_learner(make_dls(), emb_size=8, sample_rate=.5)
    w = head_w(learn).clone()
    with pytest.raises(RuntimeError, match='GradientAccumulation'), learn.no_bar(), learn.no_logging(): learn.fit(1, cbs=GradientAccumulation(64))
    assert torch.equal(head_w(learn), w)


@pytest.mark.parametrize("sample_rate", [1., .6])
def test_fused_under_autocast(sample_rate):
    "Under `Autocast` (bfloat16) the fused step runs in float32 from the body's features: its loss is the float32 loss of those features"
    spy = Spy()
    fit(1, cbs=[Autocast(), spy], fused=True, sample_rate=sample_rate, warmup=0, m2=.3, s=16.)
    assert spy.feats.dtype == torch.bfloat16
    keep = sample_centres(spy.targ, C, sample_rate, torch.Generator().set_state(spy.rng0)) if sample_rate < 1 else torch.arange(C)
    t = torch.searchsorted(keep, spy.targ)
    cos = F.normalize(spy.feats.double(), dim=1) @ F.normalize(spy.w0[keep].double(), dim=1).T
    assert spy.loss_v == pytest.approx(F.cross_entropy(margin_logits(cos, t, s=16., m2=.3), t).item(), rel=1e-5)
