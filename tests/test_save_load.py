"fastai's own `Learner.save`/`load` carry the loss's buffers, in the model's state dict; a state dict without them loads with a warning."
import warnings
import numpy as np, pytest, torch
from fastai.vision.all import Learner, SaveModelCallback, Callback, set_seed, load_model, save_model
import fastai.learner
from cosine_losses.learner import cosine_learner, softmax_learner, loss_state, _safe_load
from cosine_losses.losses import CombinedMarginLoss
from cosine_losses.family import CurricularFaceLoss, AdaFaceLoss, ElasticFaceLoss, MagFaceLoss, FAMILY_PRESETS
from cosine_losses.data import mnist_dls
import cosine_losses.distributed  # imported, it changes nothing of `save`/`load`

@pytest.fixture(scope='module')
def dls(real_mnist): return mnist_dls(real_mnist, bs=64, n_train=256, n_valid=64)

# every loss of the project with buffers: CurricularFace's t, AdaFace's μ and σ (the others have none)
WITH_BUFFERS = dict(curricularface=lambda: CurricularFaceLoss(s=30.), adaface=lambda: AdaFaceLoss(s=30.))

def test_which_losses_have_buffers(dls):
    "If a loss gains a buffer, it joins WITH_BUFFERS' round trip"
    losses = [f(dls)['loss_func'] for k,f in FAMILY_PRESETS.items() if 'loss_func' in f(dls)] + [CombinedMarginLoss()]
    have = {type(l).__name__ for l in losses if loss_state(l)}
    assert have == {'CurricularFaceLoss', 'AdaFaceLoss'}

@pytest.mark.parametrize('name', WITH_BUFFERS)
def test_round_trip_of_the_loss_state(name, dls, tmp_path):
    set_seed(0)
    learn = cosine_learner(dls, emb_size=16, loss_func=WITH_BUFFERS[name](), path=tmp_path)
    init = {k: v.clone() for k,v in loss_state(learn.loss_func).items()}
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    trained = {k: v.clone() for k,v in loss_state(learn.loss_func).items()}
    assert all(not torch.equal(trained[k], init[k]) for k in init)  # the statistics moved
    learn.save('ck')
    fresh = cosine_learner(dls, emb_size=16, loss_func=WITH_BUFFERS[name](), path=tmp_path).load('ck')
    for k,v in trained.items(): assert torch.equal(loss_state(fresh.loss_func)[k], v), k
    for a,b in zip(fresh.model.parameters(), learn.model.parameters()): assert torch.equal(a, b)
    assert fresh.opt.state_dict()['state'][0].keys() == learn.opt.state_dict()['state'][0].keys()
    assert torch.equal(fresh.opt.state_dict()['state'][0]['grad_avg'], learn.opt.state_dict()['state'][0]['grad_avg'])
    saved = _safe_load(tmp_path/'models'/'ck.pth', 'cpu')  # fastai's file, the buffers in the model's state dict
    assert set(saved) == {'model', 'opt'} and {f'loss.{k}' for k in init} <= set(saved['model'])
    other = cosine_learner(dls, emb_size=16, loss_func=WITH_BUFFERS[name](), path=tmp_path)
    other.create_opt()
    load_model(tmp_path/'models'/'ck.pth', other.model, other.opt)  # fastai's reader
    for k,v in trained.items(): assert torch.equal(loss_state(other.loss_func)[k], v), k
    # a state dict without the loss's state (another learner's): it loads, warns which buffers keep their values
    torch.save({k:v for k,v in learn.model.state_dict().items() if not k.startswith('loss.')}, tmp_path/'models'/'old.pth')
    old = cosine_learner(dls, emb_size=16, loss_func=WITH_BUFFERS[name](), path=tmp_path)
    with pytest.warns(UserWarning, match=', '.join(init)): old.load('old', with_opt=False)
    for k,v in init.items(): assert torch.equal(loss_state(old.loss_func)[k], v)
    for a,b in zip(old.model.parameters(), learn.model.parameters()): assert torch.equal(a, b)

def test_save_model_callback_reloads_the_best_epochs_statistics(dls, tmp_path):
    "SaveModelCallback's reload of the best epoch brings back that epoch's t, not the last one's"
    class Ts(Callback):
        order = 100
        def before_fit(self): self.t = []
        def after_epoch(self): self.t.append(self.loss_func.t.item())
    set_seed(0)
    learn = cosine_learner(dls, emb_size=16, loss_func=CurricularFaceLoss(s=30.), path=tmp_path)
    ts = Ts()
    # the 'best' epoch is the one with the highest valid loss: early in the fit, not the last
    with learn.no_bar(), learn.no_logging(): learn.fit(3, 1e-2, cbs=[ts, SaveModelCallback(monitor='valid_loss', comp=np.greater, fname='best')])
    vl = [v[1] for v in learn.recorder.values]
    best = max(range(3), key=lambda i: vl[i])
    assert best != 2 and len(set(ts.t)) == 3
    assert learn.loss_func.t.item() == ts.t[best]

def test_plain_learner_gets_fastais_file(dls, tmp_path):
    "A loss without buffers: the file is fastai's, and fastai's own `load_model` reads it"
    set_seed(0)
    learn = softmax_learner(dls, emb_size=16, path=tmp_path)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    f = learn.save('sm')
    assert set(_safe_load(f, 'cpu')) == {'model', 'opt'}
    other = softmax_learner(dls, emb_size=16, path=tmp_path)
    other.create_opt()
    load_model(f, other.model, other.opt)  # fastai's reader
    for a,b in zip(other.model.parameters(), learn.model.parameters()): assert torch.equal(a, b)
    bare = _safe_load(learn.save('sm2', with_opt=False), 'cpu')  # without the optimiser: fastai's bare state dict
    assert torch.equal(bare['0.0.0.weight'], learn.model[0][0][0].weight)
    again = softmax_learner(dls, emb_size=16, path=tmp_path).load('sm')  # and ours reads fastai's
    for a,b in zip(again.model.parameters(), learn.model.parameters()): assert torch.equal(a, b)

def test_fastais_methods_are_fastais():
    "`save`, `load` and `export` are fastai's own; a sharded learner's are those of its class, `ShardedLearner`"
    assert Learner.save.__module__ == Learner.load.__module__ == Learner.export.__module__ == 'fastai.learner'
    assert cosine_losses.learner.save_model is fastai.learner.save_model
    assert cosine_losses.distributed.ShardedLearner.save.__module__ == 'cosine_losses.distributed'

def test_plain_learner_carries_the_loss_when_asked(dls, tmp_path):
    "`carry_loss_state` gives a `Learner` made by hand what `cosine_learner` has; after `loss_func` is replaced, again"
    from cosine_losses.learner import carry_loss_state
    from cosine_losses.heads import ArcFaceHead
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28*28, 8), ArcFaceHead(8, 10))
    learn = Learner(dls, model, loss_func=CombinedMarginLoss(), path=tmp_path)
    assert not any(k.startswith('loss.') for k in learn.model.state_dict())
    learn.loss_func = CurricularFaceLoss(s=30.)
    with torch.no_grad(): learn.loss_func.t.fill_(.25)
    carry_loss_state(learn)
    assert learn.model.state_dict()['loss.t'] == .25
    learn.loss_func = AdaFaceLoss(s=30.)
    assert set(carry_loss_state(learn).model.state_dict()) >= {'loss.mu', 'loss.sigma'} and 'loss.t' not in learn.model.state_dict()
