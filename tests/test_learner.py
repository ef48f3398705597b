"cosine_learner and softmax_learner on a real MNIST subset: what a fastai user does with a learner, and the callbacks."
import os, subprocess, sys
from pathlib import Path
import matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastai.vision.all import (Learner, load_learner, set_seed, ClassificationInterpretation, SchedLin, resnet18,
                               EarlyStoppingCallback, SaveModelCallback, accuracy)
from cosine_losses.losses import CombinedMarginLoss
from cosine_losses.heads import ArcFaceHead
from cosine_losses.learner import cosine_learner, softmax_learner, cosine_model
from cosine_losses.callbacks import MarginScheduler, AngleStats, Autocast
from cosine_losses.data import mnist_dls


@pytest.fixture(scope='module')
def dls(real_mnist): return mnist_dls(real_mnist, bs=128, n_train=6000, n_valid=1000)

@pytest.fixture(scope='module')
def learn(dls):
    "ArcFace on the paper's CNN after one epoch of fit_one_cycle"
    set_seed(0, reproducible=True)
    l = cosine_learner(dls, m2=.5, emb_size=32)
    with l.no_bar(): l.fit_one_cycle(1, 3e-2)
    return l

def test_smoke_accuracy_floor(learn):
    # one epoch on 6,000 digits: a working loss is far above 90 %; chance is 10 %, a broken margin stays far below
    assert learn.recorder.values[-1][-1] > .9
    assert isinstance(learn.model[-1], ArcFaceHead) and isinstance(learn.loss_func, CombinedMarginLoss)
    assert learn.loss_func.m2 == .5 and learn.m2 == .5 and learn.emb_size == 32

def test_broken_loss_misses_the_floor(dls):
    "The floor above means something: a loss with the margin's sign flipped (rewarding distance) cannot reach it"
    class Flipped(CombinedMarginLoss):
        def forward(self, cos, targ): return super().forward(-cos, targ)
    set_seed(0, reproducible=True)
    l = cosine_learner(dls, emb_size=32, loss_func=Flipped(m2=.5))
    with l.no_bar(), l.no_logging(): l.fit_one_cycle(1, 3e-2)
    assert l.validate()[1] < .5

def test_get_preds_predict_and_decodes(learn, dls):
    probs,targs = learn.get_preds()
    assert probs.shape == (1000, 10) and torch.allclose(probs.sum(1), torch.ones(1000), atol=1e-5)
    cos,_ = learn.get_preds(act=lambda o: o)
    assert torch.allclose(probs, F.softmax(learn.loss_func.s*cos, 1), atol=1e-5)  # margin-free probabilities
    assert (probs.argmax(1) == targs).float().mean() == pytest.approx(learn.validate()[1], abs=1e-6)
    x = dls.valid_ds.items.imgs[0]  # a raw (28, 28) uint8 image
    lbl,idx,p = learn.predict(x)
    assert lbl == str(idx.item()) == str(int(probs[0].argmax())) and torch.allclose(p, probs[0], atol=1e-5)

def test_losses_not_reduced_and_interpretation(learn):
    _,targs,losses = learn.get_preds(with_loss=True)
    assert losses.shape == (1000,) and (losses >= 0).all() and learn.loss_func.reduction == 'mean'
    assert losses.mean().item() == pytest.approx(learn.validate()[0], rel=1e-4)
    interp = ClassificationInterpretation.from_learner(learn)
    cm = interp.confusion_matrix()
    assert cm.sum() == 1000 and cm.trace()/1000 == pytest.approx(learn.validate()[1], abs=1e-6)
    top,idx = interp.top_losses(5)
    assert torch.allclose(top, losses.sort(descending=True).values[:5])
    interp.plot_top_losses(4); learn.show_results(max_n=4)
    assert len(plt.gcf().axes) >= 4
    plt.close('all')

def test_embeddings(learn):
    emb,targs = learn.get_embeddings()
    assert emb.shape == (1000, 32) and torch.allclose(emb.norm(dim=1), torch.ones(1000), atol=1e-5)
    w = F.normalize(learn.model[-1].weight.detach(), dim=1)
    cos,_ = learn.get_preds(act=lambda o: o)
    assert torch.allclose(emb @ w.T, cos, atol=1e-5)

def test_export_load_predict_fresh_process(learn, dls, tmp_path):
    learn.export(tmp_path/'m.pkl')
    assert (tmp_path/'m.pkl').stat().st_size < 2_000_000
    x = dls.valid_ds.items.imgs[3].clone()
    torch.save(x, tmp_path/'x.pt')
    code = "import sys, torch; from fastai.learner import load_learner; l = load_learner(sys.argv[1]); print(l.predict(torch.load(sys.argv[2]))[2].tolist())"
    out = subprocess.run([sys.executable, '-c', code, str(tmp_path/'m.pkl'), str(tmp_path/'x.pt')], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert torch.allclose(torch.tensor(eval(out.stdout.strip().splitlines()[-1])), learn.predict(x)[2], atol=1e-5)

def test_lr_find_and_fine_tune(dls):
    set_seed(0)
    l = cosine_learner(dls, emb_size=16)
    with l.no_bar(), l.no_logging():
        sug = l.lr_find(show_plot=False)
        assert 1e-6 < sug.valley < 10 and len(l.recorder.losses) > 10
        l.fine_tune(1, 1e-2, freeze_epochs=1)
    assert len(l.opt.param_groups) == 2 and l.validate()[1] > .6  # body and head groups, as fastai splits them; chance is .1

def test_cpu_bf16_autocast(dls):
    set_seed(0)
    l = cosine_learner(dls, emb_size=16, cbs=Autocast(torch.bfloat16))
    seen = []
    l.model[1].register_forward_hook(lambda m,i,o: seen.append(o.dtype))
    with l.no_bar(), l.no_logging(): l.fit_one_cycle(1, 3e-2)
    vals = l.recorder.values[-1]
    assert torch.bfloat16 in seen and all(map(torch.isfinite, map(torch.tensor, vals[:2]))) and vals[-1] > .85

@pytest.mark.skipif(not torch.cuda.is_available(), reason='to_fp16 needs CUDA')
def test_cuda_fp16(dls):
    l = cosine_learner(dls, emb_size=16).to_fp16()
    with l.no_bar(): l.fit_one_cycle(1, 3e-2)
    assert l.validate()[1] > .85

def test_callbacks_together(dls, tmp_path):
    set_seed(0)
    sched = MarginScheduler({'m2': SchedLin(0., .5), 's': SchedLin(16., 30.)})
    l = cosine_learner(dls, emb_size=16, path=tmp_path, cbs=[AngleStats(), sched])
    with l.no_bar(): l.fit_one_cycle(2, 3e-2, cbs=[SaveModelCallback(monitor='accuracy'), EarlyStoppingCallback(monitor='accuracy', patience=3)])
    assert l.recorder.metric_names[-3:-1] == ['theta_target', 'theta_nearest']
    assert l.recorder.hps['m2'][0] == pytest.approx(0, abs=1e-3) and l.recorder.hps['s'][-1] == pytest.approx(30, abs=.5)
    assert (tmp_path/'models'/'model.pth').exists()

def test_softmax_learner_differs_only_in_head(dls):
    c,s = cosine_learner(dls, emb_size=24),softmax_learner(dls, emb_size=24)
    assert isinstance(s.model[-1], nn.Linear) and isinstance(s.loss_func.func, nn.CrossEntropyLoss)
    sig = lambda m: [(n, p.shape) for n,p in m[:2].named_parameters()]
    assert sig(c.model) == sig(s.model)
    assert c.metrics[0].func is accuracy and s.metrics[0].func is accuracy

def test_torchvision_arch(dls):
    l = cosine_learner(dls, resnet18, pretrained=False, n_in=1, emb_size=16)
    xb,yb = dls.one_batch()
    out = l.model(xb[:8])
    assert out.shape == (8, 10) and out.dtype == torch.float32 and out.abs().max() <= 1 + 1e-5
    l.loss_func(out, yb[:8]).backward()
    assert l.model[0][0].weight.shape[1] == 1 and all(p.grad is not None for p in l.model[-1].parameters())

def test_bad_input(dls):
    with pytest.raises(ValueError, match='m2'): cosine_learner(dls, m2=4)
    with pytest.raises(ValueError, match='`s`'): cosine_learner(dls, s=-1)
    with pytest.raises(ValueError, match='nf'): cosine_learner(dls, emb_size=0)
    with pytest.raises(ValueError, match='n_out'): cosine_learner(dls, n_out=0)
    with pytest.raises(ValueError, match='margin'): MarginScheduler({'margin': SchedLin(0, 1)})
    l = softmax_learner(dls, emb_size=8, cbs=AngleStats())
    with pytest.raises(TypeError, match='ArcFaceHead'): l.fit(1)

def test_timm_name_without_timm(dls):
    try: import timm
    except ImportError:
        with pytest.raises(ImportError, match='pip install timm'): cosine_learner(dls, 'resnet18', pretrained=False)
    else:
        l = cosine_learner(dls, 'resnet18', pretrained=False, n_in=1, emb_size=8)
        assert l.model(dls.one_batch()[0][:2]).shape == (2, 10)


# ----------------------------------------------------------------------------------------------------
# The margin family (cosine_losses.family) in a learner
# ----------------------------------------------------------------------------------------------------
from cosine_losses.family import FAMILY_PRESETS, AdaFaceLoss, CurricularFaceLoss, MagFaceLoss, dynamic_margins

@pytest.mark.parametrize("name", list(FAMILY_PRESETS))
def test_family_presets_train(dls, name):
    "Every preset trains with fit_one_cycle; the head hands norms to exactly the losses that need them"
    set_seed(0, reproducible=True)
    kw = FAMILY_PRESETS[name](dls)
    l = cosine_learner(dls, emb_size=32, **kw)
    assert l.model[-1].norms == getattr(l.loss_func, 'needs_norms', False)
    before = {k: v.clone() for k,v in l.loss_func.state_dict().items()}
    with l.no_bar(), l.no_logging(): l.fit_one_cycle(1, 3e-2)
    assert l.validate()[1] > .85  # one epoch on 6,000 digits; chance is .1
    assert all(not torch.equal(v, l.loss_func.state_dict()[k]) for k,v in before.items())  # the running statistics moved

@pytest.fixture(scope='module')
def ada_learn(dls):
    set_seed(0, reproducible=True)
    l = cosine_learner(dls, emb_size=32, loss_func=AdaFaceLoss(s=30.))
    with l.no_bar(), l.no_logging(): l.fit_one_cycle(1, 3e-2)
    return l

def test_family_fastai_tools_unchanged(ada_learn, dls):
    "AdaFace's model output is still the (N, C) cosines: get_preds, with_loss, predict and Interpretation work as for ArcFace"
    probs, targs, losses = ada_learn.get_preds(with_loss=True)
    assert probs.shape == (1000, 10) and losses.shape == (1000,) and not hasattr(probs, 'norms')
    assert losses.mean().item() == pytest.approx(ada_learn.validate()[0], rel=1e-4)
    cos, _ = ada_learn.get_preds(act=lambda o: o)
    assert type(cos) is torch.Tensor and torch.allclose(probs, F.softmax(30*cos, 1), atol=1e-5)
    lbl, idx, p = ada_learn.predict(dls.valid_ds.items.imgs[0])
    assert torch.allclose(p, probs[0], atol=1e-5)
    interp = ClassificationInterpretation.from_learner(ada_learn)
    assert interp.confusion_matrix().sum() == 1000
    mu = ada_learn.loss_func.mu.clone()
    ada_learn.validate(); ada_learn.get_preds()
    assert torch.equal(mu, ada_learn.loss_func.mu)  # validation does not move the statistics

def test_family_export_load_fresh_process(ada_learn, dls, tmp_path):
    "The running statistics are exported with the learner and loaded in a fresh process; predictions are equal"
    ada_learn.export(tmp_path/'ada.pkl')
    x = dls.valid_ds.items.imgs[5].clone()
    torch.save(x, tmp_path/'x.pt')
    code = ("import sys, torch; from fastai.learner import load_learner; l = load_learner(sys.argv[1]); "
            "print([l.loss_func.mu.item(), l.loss_func.sigma.item(), l.model[-1].norms] + l.predict(torch.load(sys.argv[2]))[2].tolist())")
    out = subprocess.run([sys.executable, '-c', code, str(tmp_path/'ada.pkl'), str(tmp_path/'x.pt')], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    mu, sigma, norms, *p = eval(out.stdout.strip().splitlines()[-1])
    assert (mu, sigma, norms) == (ada_learn.loss_func.mu.item(), ada_learn.loss_func.sigma.item(), True) and mu != 20. and sigma != 100.
    assert torch.allclose(torch.tensor(p), ada_learn.predict(x)[2], atol=1e-5)

def test_family_curricular_t_survives_export(dls, tmp_path):
    set_seed(0)
    l = cosine_learner(dls, emb_size=16, loss_func=CurricularFaceLoss(s=30.))
    with l.no_bar(), l.no_logging(): l.fit(1, 1e-2)
    l.export(tmp_path/'cf.pkl')
    t = load_learner(tmp_path/'cf.pkl').loss_func.t
    assert t.item() == l.loss_func.t.item() != 0

def test_family_magface_norm_gradient_reaches_the_body(dls):
    "MagFace trains the norm: the embedding's gradient gets a radial part, exactly dL/d‖x‖ (a normalised head alone gives none)"
    l = cosine_learner(dls, emb_size=16, loss_func=MagFaceLoss.finetune(s=30.))
    xb, yb = dls.one_batch()
    emb = l.model[:2](xb[:32]).detach().requires_grad_()
    l.loss_func(l.model[2](emb), yb[:32]).backward()
    radial = (emb.grad*F.normalize(emb.detach(), dim=1)).sum(1)
    a = emb.detach().norm(dim=1).requires_grad_()
    MagFaceLoss.finetune(s=30.)(l.model[2](emb.detach()).detach(), yb[:32], a).backward()
    assert (a.grad != 0).all() and torch.allclose(radial, a.grad, atol=1e-6)
    emb.grad = None
    CombinedMarginLoss(30.)(l.model[2](emb), yb[:32]).backward()
    assert (emb.grad*emb.detach()).sum(1).abs().max() < 1e-6
    assert l.model[0][0][0].weight.grad is None  # (the body was not in this graph)

def test_family_bf16_autocast_keeps_norms(dls):
    "Under the Autocast callback the cosines (float32) keep their norms through fastai's to_float"
    set_seed(0)
    l = cosine_learner(dls, emb_size=16, loss_func=AdaFaceLoss(s=30.), cbs=Autocast(torch.bfloat16))
    with l.no_bar(), l.no_logging(): l.fit_one_cycle(1, 3e-2)
    assert l.recorder.values[-1][-1] > .8 and l.loss_func.mu.item() != 20.

def test_dynamic_margins_from_mnist_labels(dls):
    l = cosine_learner(dls, emb_size=8, m2='dynamic')
    labels = dls.train_ds.items.labels
    assert torch.equal(l.loss_func.m2, dynamic_margins(labels, 10)) and torch.equal(l.m2, l.loss_func.m2)
    counts = torch.bincount(labels.long(), minlength=10)
    assert l.loss_func.m2[counts.argmax()] == pytest.approx(.05) and l.loss_func.m2[counts.argmin()] == pytest.approx(.5)
    assert isinstance(cosine_learner(dls, emb_size=8, m2=0., m3='dynamic').loss_func.m3, torch.Tensor)
    with pytest.raises(ValueError, match="'dynamic'"): cosine_learner(dls, m2='dinamic')
    with pytest.raises(ValueError, match='per-class margins'):
        l = cosine_learner(dls, emb_size=8, m2=torch.full((7,), .3))
        l.loss_func(l.model(dls.one_batch()[0][:4]), dls.one_batch()[1][:4])

def test_lr_find_leaves_loss_statistics(dls):
    "lr_find puts the model back, and AdaFace's μ, σ too: KeepLossStats, and without it lr_find's reload of what `save` wrote"
    from cosine_losses.learner import KeepLossStats
    l = cosine_learner(dls, emb_size=16, loss_func=AdaFaceLoss(s=30.))
    assert any(isinstance(c, KeepLossStats) for c in l.cbs)
    before = {k: v.clone() for k,v in l.loss_func.state_dict().items()}
    with l.no_bar(): l.lr_find(show_plot=False, num_it=30)
    assert all(torch.equal(v, l.loss_func.state_dict()[k]) for k,v in before.items())
    l.remove_cb(KeepLossStats)
    with l.no_bar(): l.lr_find(show_plot=False, num_it=30)
    assert all(torch.equal(v, l.loss_func.state_dict()[k]) for k,v in before.items())  # `save` carries the loss's buffers
    from fastai.callback.core import Callback
    moved = []
    class Moved(Callback):
        order = -100  # before LRFinder's `after_fit` puts everything back
        def after_fit(self): moved.append(self.loss_func.mu.item())
    with l.no_bar(), l.added_cbs(Moved()): l.lr_find(show_plot=False, num_it=30)
    assert moved[0] != before['mu'].item() and l.loss_func.mu == before['mu']  # they moved in the mock training, and were put back
    assert not any(isinstance(c, KeepLossStats) for c in cosine_learner(dls, emb_size=8).cbs)  # only for losses with statistics

def test_embeddings_of_more_unseen_than_seen_classes(real_mnist):
    "The README's `learn.get_embeddings(dl=dls.unseen)` when 7 unseen classes outnumber 3 seen ones: no loss is evaluated on them"
    from cosine_losses.data import mnist_dls
    from cosine_losses.splits import open_set_dls
    dls = open_set_dls(mnist_dls(real_mnist, n_train=600, n_valid=500), seen=3)
    learn = cosine_learner(dls)
    emb,targs = learn.get_embeddings(dl=dls.unseen)
    labels = dls.unseen.dataset.items.labels  # codes into the unseen classes' vocab, digits 3 to 9
    assert emb.shape == (len(labels), 128) and torch.equal(targs, labels.long())
    assert {dls.unseen.vocab[t] for t in targs} == set(range(3, 10)) and len(set(targs.tolist())) == 7 > dls.c == 3
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(len(emb)))
    test,none = learn.get_embeddings(dl=dls.test_dl(list(dls.unseen.dataset.items.imgs[:50])))  # raw images, no labels
    assert none is None
    torch.testing.assert_close(test, emb[:50], atol=1e-5, rtol=0)
