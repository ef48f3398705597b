"""Tests of `cosine_losses.heads.ArcFaceHead` against a plain float64 reference."""
import math, pickle
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from torch.func import functional_call

from cosine_losses.heads import ArcFaceHead
from cosine_losses.losses import CombinedMarginLoss


def ref_cos(x, w, n_out, k=1):
    "float64 reference: cosine to every centre, then the max over each class's k consecutive rows"
    c = F.normalize(x.double(), dim=1) @ F.normalize(w.double(), dim=1).T
    return torch.stack([c[:, j*k:(j+1)*k].max(dim=1).values for j in range(n_out)], dim=1)


@pytest.mark.parametrize("nf,n_out", [(2, 3), (16, 10), (7, 1)])
def test_output_matches_reference(nf, n_out):
    head = ArcFaceHead(nf, n_out)
    x = torch.randn(9, nf)*torch.tensor([1e-3, 1., 50.]).repeat(3)[:, None]   # several feature norms
    out = head(x)
    assert out.shape == (9, n_out) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_cos(x, head.weight.detach(), n_out), rtol=0, atol=1e-6)
    assert (out.abs() <= 1 + 1e-6).all()


def test_invariant_to_scale_of_features_and_centres():
    head = ArcFaceHead(5, 4)
    x = torch.randn(6, 5)
    a = head(x)
    torch.testing.assert_close(head(x*123.), a, rtol=0, atol=1e-6)
    with torch.no_grad(): head.weight.mul_(torch.tensor([0.1, 2., 7., 1.])[:, None])
    torch.testing.assert_close(head(x), a, rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [2, 3])
def test_subcentres_are_max_over_consecutive_rows(k):
    nf, n_out = 6, 4
    head = ArcFaceHead(nf, n_out, k=k)
    assert head.weight.shape == (n_out*k, nf)
    x = torch.randn(10, nf)
    out = head(x)
    assert out.shape == (10, n_out)
    w = head.weight.detach()
    torch.testing.assert_close(out.double(), ref_cos(x, w, n_out, k), rtol=0, atol=1e-6)
    # explicit loop: class j uses rows j*k .. j*k+k-1, nothing else
    full = F.normalize(x.double(), dim=1) @ F.normalize(w.double(), dim=1).T
    for j in range(n_out):
        exp = torch.maximum(full[:, j*k], full[:, j*k+1])
        if k == 3: exp = torch.maximum(exp, full[:, j*k+2])
        torch.testing.assert_close(out[:, j].double(), exp, rtol=0, atol=1e-6)
    # moving one sub-centre onto a feature makes that class's cosine exactly 1 for it
    with torch.no_grad(): head.weight[2*k + k - 1] = x[0]*3
    assert head(x)[0, 2].item() == pytest.approx(1., abs=1e-6)


def test_bf16_autocast_returns_float32():
    head = ArcFaceHead(8, 5)
    x = torch.randn(4, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16): out = head(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_cos(x, head.weight.detach(), 5), rtol=0, atol=2e-2)


def test_float16_input_returns_float32():
    head = ArcFaceHead(8, 5)
    x = torch.randn(4, 8).half()
    out = head(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_cos(x.float(), head.weight.detach(), 5), rtol=0, atol=1e-3)


def test_float64_head_is_float64():
    "head.double() with float64 features computes in float64 (needed for gradcheck)"
    head = ArcFaceHead(3, 4).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    out = head(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref_cos(x, head.weight.detach(), 4), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2])
def test_gradcheck_wrt_input_and_weight(k):
    head = ArcFaceHead(3, 4, k=k).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w = head.weight.detach().clone().requires_grad_(True)
    f = lambda x_, w_: functional_call(head, {'weight': w_}, (x_,))
    assert torch.autograd.gradcheck(f, (x, w), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_weight_is_registered_parameter():
    head = ArcFaceHead(4, 3, k=2)
    assert isinstance(head.weight, nn.Parameter) and head.weight.requires_grad
    params = list(head.parameters())
    assert len(params) == 1 and params[0] is head.weight
    assert list(head.state_dict()) == ['weight']
    assert torch.isfinite(head.weight).all() and head.weight.abs().sum() > 0   # initialised, not empty memory
    # an optimizer step changes it
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    before = head.weight.detach().clone()
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    CombinedMarginLoss(s=10.)(head(x), y).backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(head.weight, before)


def test_inside_sequential():
    body = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6))
    head = ArcFaceHead(6, 3)
    model = nn.Sequential(body, head)
    x, y = torch.randn(7, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    out = model(x)
    torch.testing.assert_close(out.double(), ref_cos(body(x).detach(), head.weight.detach(), 3), rtol=0, atol=1e-6)
    CombinedMarginLoss(s=10.)(out, y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert body[0].weight.grad.abs().sum() > 0
    assert sum(1 for p in model.parameters() if p is head.weight) == 1


def test_pickle_round_trip():
    head = ArcFaceHead(4, 3, k=2)
    b = pickle.dumps(head)
    assert b'cosine_losses.heads' in b
    h2 = pickle.loads(b)
    assert (h2.nf, h2.n_out, h2.k) == (4, 3, 2)
    assert torch.equal(h2.weight, head.weight)
    x = torch.randn(3, 4)
    assert torch.equal(h2(x), head(x))


@pytest.mark.parametrize("shape", [(4, 5), (4, 7), (4,), (2, 4, 6), (4, 6, 1)])
def test_bad_input_shape(shape):
    head = ArcFaceHead(6, 3)
    with pytest.raises(ValueError, match='nf'): head(torch.randn(*shape))


@pytest.mark.parametrize("name", ['nf', 'n_out', 'k'])
@pytest.mark.parametrize("bad", [0, -2, 2.5, 3., True, '3', None])
def test_bad_constructor_args(name, bad):
    kw = dict(nf=4, n_out=3, k=1) | {name: bad}
    with pytest.raises((ValueError, TypeError), match=f'`{name}`'): ArcFaceHead(**kw)


def test_extra_repr():
    assert 'nf=4, n_out=3' in repr(ArcFaceHead(4, 3)) and 'k=' not in repr(ArcFaceHead(4, 3))
    assert 'k=2' in repr(ArcFaceHead(4, 3, k=2))


# ----------------------------------------------------------------------------------------------------
# Feature norms for AdaFace and MagFace: ArcFaceHead(norms=True)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3])
def test_norms_attached_with_gradient(k):
    head = ArcFaceHead(5, 4, k=k, norms=True)
    ref = ArcFaceHead(5, 4, k=k)
    with torch.no_grad(): ref.weight.copy_(head.weight)
    x = (torch.randn(6, 5)*torch.rand(6, 1)*10).requires_grad_()
    cos = head(x)
    torch.testing.assert_close(cos, ref(x))  # the cosines are unchanged
    assert cos.norms.shape == (6,) and cos.norms.dtype == torch.float32
    torch.testing.assert_close(cos.norms, torch.tensor([math.sqrt(sum(v*v for v in r)) for r in x.tolist()]))
    (cos.norms*torch.arange(6.)).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(6.)[:,None]*x.detach()/x.detach().norm(dim=1, keepdim=True))

def test_norms_do_not_travel_beyond_the_output():
    "Any operation returns a plain tensor without the norms: fastai's get_preds, metrics and predict never see them"
    cos = ArcFaceHead(3, 2, norms=True)(torch.randn(4, 3))
    assert type(cos) is torch.Tensor and hasattr(cos, 'norms')
    for o in (cos.detach(), cos[:2], cos*1, torch.cat([cos, cos]), cos.clone(), cos.softmax(1)): assert not hasattr(o, 'norms')
    assert cos.float() is cos  # fastai's `to_float` keeps the very object for a float32 output

def test_norms_under_autocast_and_float64():
    x = torch.randn(4, 8)*3
    with torch.autocast('cpu', dtype=torch.bfloat16): cos = ArcFaceHead(8, 3, norms=True)(x)
    assert cos.norms.dtype == torch.float32
    torch.testing.assert_close(cos.norms, x.norm(dim=1))
    assert ArcFaceHead(8, 3, norms=True).double()(x.double()).norms.dtype == torch.float64

def test_norms_off_by_default_and_flag_checked():
    assert not hasattr(ArcFaceHead(3, 2)(torch.randn(2, 3)), 'norms')
    assert 'norms=True' in repr(ArcFaceHead(3, 2, norms=True)) and 'norms' not in repr(ArcFaceHead(3, 2))
    with pytest.raises(TypeError, match='norms'): ArcFaceHead(3, 2, norms=1)
    h = pickle.loads(pickle.dumps(ArcFaceHead(3, 2, norms=True)))
    assert hasattr(h(torch.randn(2, 3)), 'norms')


def test_sample_centres_keeps_targets_and_draws_uniformly():
    "Partial FC's rule: every target's centre, ⌈rate·n⌉ in all, the others uniformly, repeatable from a generator"
    from cosine_losses.heads import sample_centres
    g = torch.Generator().manual_seed(0)
    targ = torch.tensor([4, 4, 9, 17])
    draws = torch.stack([torch.isin(torch.arange(20), sample_centres(targ, 20, .3, g)) for _ in range(3000)]).float()
    assert (draws.sum(1) == 6).all() and draws[:, [4, 9, 17]].min() == 1
    neg = draws[:, [i for i in range(20) if i not in (4, 9, 17)]].mean(0)
    assert ((neg - 3/17).abs() < .04).all()
    keep = sample_centres(targ, 20, .3, torch.Generator().manual_seed(5))
    assert torch.equal(keep, keep.sort().values) and torch.equal(keep, sample_centres(targ, 20, .3, torch.Generator().manual_seed(5)))
    assert torch.equal(sample_centres(torch.arange(10), 20, .3), torch.arange(10))  # more targets than the rate: all of them
    assert torch.equal(sample_centres(targ, 20, 1.), torch.arange(20))


def test_sampling_head_generator_is_state():
    "The head's generator state is a buffer: the state dict carries the draws; outside training all classes; features when asked"
    h = ArcFaceHead(4, 50, sample_rate=.1, seed=3)
    y = torch.tensor([7, 7, 41])
    first = h.sample(y)
    assert len(first) == 5 and torch.isin(torch.tensor([7, 41]), first).all()
    sd = {k: v.clone() for k,v in h.state_dict().items()}
    assert set(sd) == {'weight', 'rng'}
    nxt = h.sample(y)
    h2 = ArcFaceHead(4, 50, sample_rate=.1, seed=3)
    assert torch.equal(h2.sample(y), first)
    h2.load_state_dict(sd)
    assert torch.equal(h2.sample(y), nxt)
    assert not torch.equal(ArcFaceHead(4, 50, sample_rate=.1, seed=4).sample(y), first)
    x = torch.randn(3, 4)
    h.pass_features = True
    assert h(x) is x
    h.eval()
    torch.testing.assert_close(h(x).double(), ref_cos(x, h.weight.detach(), 50), rtol=0, atol=1e-6)
    assert set(ArcFaceHead(4, 5).state_dict()) == {'weight'} and 'sample_rate=0.1, seed=3' in repr(h)
    for bad in (0, 1.5, -.1, True, '0.5'):
        with pytest.raises(ValueError, match='sample_rate'): ArcFaceHead(4, 5, sample_rate=bad)
    with pytest.raises(TypeError, match='seed'): ArcFaceHead(4, 5, sample_rate=.5, seed=1.5)
