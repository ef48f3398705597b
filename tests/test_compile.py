"""`Learner.compile` / `Compiler`: compiled training computes what eager training does, and works with `fit_one_cycle`,
`get_preds`, `export`, fastai's hooks and our callbacks.

Most tests use the `aot_eager` backend: it traces model and loss, forward and backward, through dynamo and
AOTAutograd as `inductor` does, without generating C++ (seconds instead of a minute on this machine); one test
compiles with `inductor` for real."""
import pickle
import pytest, torch, torch.nn as nn
from fastai.vision.all import Learner, load_learner, set_seed, SchedLin, Hook, CrossEntropyLossFlat, accuracy
from cosine_losses.heads import ArcFaceHead
from cosine_losses.losses import CombinedMarginLoss
from cosine_losses.data import tensor_dls
from cosine_losses.learner import cosine_learner, softmax_learner
from cosine_losses.callbacks import MarginScheduler, AngleStats
from cosine_losses.compile import Compiler, compile_module, is_compiled, uncompile_module


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def blocks(n, seed):
    "16×16 uint8 images of noise with a bright 6×6 block in one of 4 places: the label"
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randint(0, 80, (n, 16, 16), generator=g, dtype=torch.uint8)
    for i,c in enumerate(y.tolist()): x[i, 8*(c//2)+1:8*(c//2)+7, 8*(c%2)+1:8*(c%2)+7] += 150
    return x, y

def make_dls():
    return tensor_dls(*blocks(320, 0), *blocks(96, 1), bs=64)  # validation batches of 64 and 32: a shape change

@pytest.fixture
def dls(): return make_dls()


def fit(dls, compiled, lf=cosine_learner, epochs=2, cbs=None, **kw):
    "A learner fitted from seed 0; `dls` only for its type: fresh ones, as a DataLoader's shuffle draws from its own RNG"
    set_seed(0, reproducible=True)
    learn = lf(make_dls(), emb_size=16, cbs=cbs)
    if compiled: learn.compile(backend='aot_eager', **kw)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, 3e-2)
    return learn


def test_compiled_training_equals_eager(dls):
    "Same seed, same data: the compiled learner's losses, accuracy and weights are the eager learner's"
    eager, comp = fit(dls, False), fit(dls, True)
    assert is_compiled(comp.model) and is_compiled(comp.loss_func) and not is_compiled(eager.model)
    torch.testing.assert_close(torch.tensor(comp.recorder.values), torch.tensor(eager.recorder.values), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(comp.model[-1].weight, eager.model[-1].weight, rtol=1e-4, atol=1e-5)
    assert comp.recorder.values[-1][-1] > .9   # and it learned: the blocks are easy


def test_fullgraph_model_and_loss(dls):
    "With fullgraph=True a graph break is an error: the paper's CNN, `ArcFaceHead` and `CombinedMarginLoss` have none"
    learn = fit(dls, True, epochs=1, fullgraph=True)
    assert learn.recorder.values[-1][-1] > .5


def test_get_preds_embeddings_export(dls, tmp_path):
    learn = fit(dls, True, epochs=1)
    probs, targs, losses = learn.get_preds(with_loss=True)   # the loss recompiles for reduction='none'
    assert probs.shape == (96, 4) and losses.shape == (96,) and learn.loss_func.reduction == 'mean'
    emb, _ = learn.get_embeddings()   # a fastai Hook registered on the compiled model's head after compiling
    assert emb.shape == (96, 16)
    learn.export(tmp_path/'l.pkl')
    assert is_compiled(learn.model)   # exporting does not uncompile the learner in memory
    loaded = load_learner(tmp_path/'l.pkl')
    assert not is_compiled(loaded.model) and not is_compiled(loaded.loss_func)
    assert any(isinstance(cb, Compiler) for cb in loaded.cbs)   # a later fit of the loaded learner compiles again
    torch.testing.assert_close(loaded.get_preds(dl=learn.dls.valid)[0], probs, rtol=1e-4, atol=1e-5)


def test_callbacks_and_bounded_recompiles(dls):
    "MarginScheduler sets a new m2 every batch and AngleStats reads the cosines: a handful of graphs, not one per batch"
    from torch._dynamo.utils import counters
    counters.clear()
    learn = fit(dls, True, cbs=[MarginScheduler({'m2': SchedLin(.1, .5)}), AngleStats()])
    m2 = learn.recorder.hps['m2']
    assert len(m2) == 10 and m2[0] == pytest.approx(.1) and m2[-1] > .45
    assert len(learn.recorder.values[-1]) == 5   # train loss, valid loss, accuracy, θ_y, θ_nearest
    # model and loss, each in training and validation, plus one recompile for the changing margin
    assert counters['stats']['unique_graphs'] <= 8


def test_softmax_learner_base_loss(dls):
    "fastai's `CrossEntropyLossFlat` is a `BaseLoss`: its `func` is the module that gets compiled"
    learn = fit(dls, True, lf=softmax_learner, epochs=1)
    assert isinstance(learn.loss_func, CrossEntropyLossFlat) and is_compiled(learn.loss_func.func)


def test_compile_uncompile_and_new_model(dls):
    learn = cosine_learner(dls, emb_size=16)
    learn.compile(backend='aot_eager').compile(backend='aot_eager', loss=False)   # compiling again replaces the settings
    assert len([cb for cb in learn.cbs if isinstance(cb, Compiler)]) == 1
    assert is_compiled(learn.model) and not is_compiled(learn.loss_func)
    learn.uncompile()
    assert not is_compiled(learn.model) and not any(isinstance(cb, Compiler) for cb in learn.cbs)
    learn.add_cb(Compiler(backend='aot_eager'))
    assert not is_compiled(learn.model)   # the callback compiles when a fit starts
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert is_compiled(learn.model) and is_compiled(learn.loss_func)


def test_compile_module_keeps_module_and_hooks():
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(5, 4)
    eager = m(x)
    sd = list(m.state_dict())
    compile_module(m, backend='aot_eager')
    torch.testing.assert_close(m(x), eager)
    assert list(m.state_dict()) == sd and isinstance(m[-1], nn.Linear)
    seen = []
    with Hook(m[0], lambda mod, i, o: seen.append(o.shape)): m(x)
    assert seen == [torch.Size([5, 8])]
    m(x)
    assert len(seen) == 1   # a removed hook is not replayed from the graph it was traced into
    assert not is_compiled(pickle.loads(pickle.dumps(m)))
    assert not is_compiled(uncompile_module(m))


def test_inductor(dls):
    "The default backend generates C++ kernels here: a small compiled model learns, and predicts what it does eagerly"
    set_seed(0, reproducible=True)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 16), ArcFaceHead(16, 4))
    learn = Learner(dls, model, loss_func=CombinedMarginLoss(), metrics=accuracy).compile()
    assert isinstance(learn.compiler, Compiler) and callable(learn.compile)   # the callback's attribute leaves the method alone
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 3e-2)
    assert learn.recorder.values[-1][-1] > .9
    preds = learn.get_preds()[0]
    learn.uncompile()
    torch.testing.assert_close(learn.get_preds()[0], preds, rtol=1e-3, atol=1e-4)
