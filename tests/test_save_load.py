"`Learner.save`/`load` carry the loss's buffers; old checkpoints still load with a warning; plain learners get fastai's file; one patch per method."
import warnings
import numpy as np, pytest, torch
from fastai.vision.all import Learner, SaveModelCallback, Callback, set_seed, load_model, save_model
import fastai.learner
from cosine_losses.learner import cosine_learner, softmax_learner, loss_state, _safe_load
from cosine_losses.losses import CombinedMarginLoss
from cosine_losses.family import CurricularFaceLoss, AdaFaceLoss, ElasticFaceLoss, MagFaceLoss, FAMILY_PRESETS
from cosine_losses.data import mnist_dls
import cosine_losses.distributed  # imported, it must not change `save`/`load` a second time

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
    # a checkpoint without the loss's state (fastai's, or written before): it loads, warns which buffers keep their values
    save_model(tmp_path/'models'/'old.pth', learn.model, learn.opt)
    old = cosine_learner(dls, emb_size=16, loss_func=WITH_BUFFERS[name](), path=tmp_path)
    with pytest.warns(UserWarning, match=', '.join(init)): old.load('old')
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

def test_one_patch_per_fastai_method():
    "`save`/`load` are changed in `learner` only, `export` in `distributed` only; importing `distributed` wraps none of them again"
    assert Learner.save.__module__ == Learner.load.__module__ == 'cosine_losses.learner'
    assert Learner.export.__module__ == 'cosine_losses.distributed'
    assert cosine_losses.distributed._save_unsharded in cosine_losses.learner._SAVE_AS
    assert cosine_losses.learner.save_model is fastai.learner.save_model  # plain learners: fastai's own writer
