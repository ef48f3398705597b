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
    assert torch.allclose(probs, F.softmax(30*cos, 1), atol=1e-5)  # margin-free probabilities
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
