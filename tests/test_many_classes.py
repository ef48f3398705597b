"""Many identities, few images each: at the defaults every margin loss trains, where the old default (s = 30, margins
from the first step) does not. 280 seen three-digit numbers (hard to read: 12 px digits, thin faint strokes), 13
training images each; `fit_one_cycle(10, 3e-2)`, as `cosine-compare` trains. benchmarks/many_classes.py has the
full-size figures (700 identities, 3 seeds)."""
import warnings
import pytest
from fastai.vision.all import set_seed
from cosine_losses.identities import mnist_numbers, identity_dls
from cosine_losses.learner import cosine_learner, softmax_learner
from cosine_losses.watch import StuckRunWarning

@pytest.fixture(scope='module')
def dls(real_mnist):
    x,y,names = mnist_numbers(n_ids=400, per_id=16, digits=3, seed=0, size=12, thin=1, shift=3, stretch=False, path=real_mnist)
    return identity_dls(x, y, names, seen=.7, seed=0, valid_per_id=3)

def _fit(make):
    "Validation accuracy and the `StuckRunWarning`s of `make()` trained as `cosine-compare` trains, from seed 0"
    set_seed(0, reproducible=True)
    learn = make()
    with warnings.catch_warnings(record=True) as w, learn.no_bar(), learn.no_logging():
        warnings.simplefilter('always')
        learn.fit_one_cycle(10, 3e-2)
    return learn.validate()[1],[o for o in w if o.category is StuckRunWarning]

def _chance(dls): return 1/len(dls.vocab)

@pytest.fixture(scope='module')
def softmax_acc(dls):
    acc,stuck = _fit(lambda: softmax_learner(dls))
    assert not stuck and acc > 30*_chance(dls)
    return acc

@pytest.mark.parametrize('margins', [dict(m2=.5), dict(m2=0., m3=.35), dict(m2=.4, m3=.2)], ids=['arcface', 'cosface', 'combined'])
def test_margin_losses_train_at_the_defaults(dls, softmax_acc, margins):
    learn = cosine_learner(dls, **margins)
    assert learn.s == 10. and learn.warmup == .3  # auto_scale for 280 classes: the floor
    acc,stuck = _fit(lambda: cosine_learner(dls, **margins))
    assert len(dls.vocab) == 280 and not stuck
    assert acc > 30*_chance(dls) and acc > .8*softmax_acc, (acc, softmax_acc)  # 30× chance: 10.7 %

def test_the_old_default_does_not(dls, softmax_acc):
    "The test above can fail: ArcFace at s = 30 with its margin from the first step stays far behind on the same data"
    acc,_ = _fit(lambda: cosine_learner(dls, m2=.5, s=30., warmup=0.))
    assert acc < .25*softmax_acc, (acc, softmax_acc)  # 2–5 % against softmax's 29 % and the defaults' 36–38 %
