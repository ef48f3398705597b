"""Tests of `cosine_losses.family` against float64 scalar references written from each paper's equations.

Every reference below uses the `math` module only, one sample at a time; gradients are checked against central
finite differences of those references, so neither values nor gradients are checked against the library's own code."""
import math, pickle, warnings
import pytest, torch, torch.nn.functional as F
import torch.multiprocessing as mp

from cosine_losses.losses import CombinedMarginLoss, ArcFaceLoss, CosFaceLoss
from cosine_losses.heads import ArcFaceHead
from cosine_losses.family import (dynamic_margins, train_labels, CurricularFaceLoss, AdaFaceLoss, ElasticFaceLoss, MagFaceLoss,
                                  FAMILY_PRESETS)

PI = math.pi

# ----------------------------------------------------------------------------------------------------
# Scalar references, from the papers
# ----------------------------------------------------------------------------------------------------
def ce_row(z, y):
    mx = max(z)
    return mx + math.log(sum(math.exp(v - mx) for v in z)) - z[y]

def arc_target(th, m):
    "ArcFace's target cosine with the monotone fallback past θ > π − m"
    return math.cos(th + m) if th <= PI - m else math.cos(th) - max(m*math.sin(m), 1 - math.cos(m))

def curricular_rows(cos, targ, m, s, t):
    "CurricularFace, Huang et al. 2020: T = cos(θ_y + m); N(t, c_j) = c_j if T − c_j >= 0 else c_j (t + c_j)"
    out = []
    for row,y in zip(cos, targ):
        T = arc_target(math.acos(row[y]), m)
        out.append(ce_row([s*T if j == y else s*(c if T - c >= 0 else c*(t + c)) for j,c in enumerate(row)], y))
    return out

def adaface_rows(cos, targ, norms, m, h, s, mu, sigma, eps=1e-3):
    "AdaFace, Kim et al. 2022: ẑ = clip(h(‖z‖−μ)/(σ+ε), ±1); target s(cos(clip(θ − mẑ, ε, π−ε)) − (mẑ + m))"
    out = []
    for row,y,a in zip(cos, targ, norms):
        zh = min(1., max(-1., h*(min(100., max(1e-3, a)) - mu)/(sigma + eps)))
        th = min(PI - eps, max(eps, math.acos(row[y]) - m*zh))
        out.append(ce_row([s*(math.cos(th) - (m*zh + m)) if j == y else s*c for j,c in enumerate(row)], y))
    return out

def elastic_rows(cos, targ, margins, kind, s):
    "ElasticFace, Boutros et al. 2022: ArcFace or CosFace target with the sample's own drawn margin"
    out = []
    for row,y,m in zip(cos, targ, margins):
        T = arc_target(math.acos(row[y]), m) if kind == 'arc' else row[y] - m
        out.append(ce_row([s*T if j == y else s*c for j,c in enumerate(row)], y))
    return out

def magface_rows(cos, targ, norms, l_a, u_a, l_m, u_m, lam, s):
    "MagFace, Meng et al. 2021: s·cos(θ_y + m(a)) with m linear on [l_a, u_a], plus λ_g (a/u_a² + 1/a)"
    out = []
    for row,y,a in zip(cos, targ, norms):
        a = min(u_a, max(l_a, a))
        m = (u_m - l_m)/(u_a - l_a)*(a - l_a) + l_m
        T = arc_target(math.acos(row[y]), m)
        out.append(ce_row([s*T if j == y else s*c for j,c in enumerate(row)], y) + lam*(a/u_a**2 + 1/a))
    return out

def fd_grad(f, x, h=1e-6):
    "Central finite differences of the scalar function `f` of a list of lists (or list) `x`"
    x = torch.as_tensor(x, dtype=torch.float64)
    g = torch.zeros_like(x)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in x.shape]) if x.ndim > 1 else torch.arange(len(x))[:,None]:
        idx = tuple(idx.tolist())
        xp,xm = x.clone(),x.clone()
        xp[idx] += h; xm[idx] -= h
        g[idx] = (f(xp.tolist()) - f(xm.tolist()))/(2*h)
    return g

def some_cos(n=8, c=5, lo=-0.95, hi=0.95):
    return torch.rand(n, c, dtype=torch.float64)*(hi - lo) + lo

W = torch.arange(1, 9, dtype=torch.float64)  # weights so that the gradient of each sample's loss is checked separately

# ----------------------------------------------------------------------------------------------------
# dynamic margins
# ----------------------------------------------------------------------------------------------------
def ref_dynamic(counts, lo, hi):
    t = [c**-0.25 if c > 0 else None for c in counts]
    ts = [v for v in t if v is not None]
    a,b = min(ts),max(ts)
    return [hi if v is None or b == a else lo + (hi - lo)*(v - a)/(b - a) for v in t]

@pytest.mark.parametrize("counts,lo,hi", [([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949], .05, .5),
                                          ([1000, 1, 30, 0, 7], .1, .3), ([4, 4, 0], .05, .5), ([3], .2, .2)])
def test_dynamic_margins_reference(counts, lo, hi):
    torch.testing.assert_close(dynamic_margins(counts=torch.tensor(counts), lo=lo, hi=hi), torch.tensor(ref_dynamic(counts, lo, hi), dtype=torch.float32))

def test_dynamic_margins_from_labels_keep_class_index():
    "Class 1 has no label: it keeps index 1 (the Kaggle code's value_counts would have given class 2's margin to it)"
    labels = torch.tensor([0]*16 + [2]*1 + [3]*81)
    m = dynamic_margins(labels, 4)
    torch.testing.assert_close(m, torch.tensor(ref_dynamic([16, 0, 1, 81], .05, .5), dtype=torch.float32))
    assert m[2] == .5 and m[3] == pytest.approx(.05) and m[1] == .5
    assert dynamic_margins(labels.int(), n_classes=6).shape == (6,)  # trailing absent classes too

@pytest.mark.parametrize("kw,exc,match", [
    (dict(), ValueError, 'either'), (dict(labels=torch.tensor([0]), counts=torch.tensor([1])), ValueError, 'either'),
    (dict(labels=torch.tensor([0, 1])), ValueError, 'n_classes'), (dict(labels=torch.tensor([0, 5]), n_classes=3), ValueError, r'\[0, 3\)'),
    (dict(labels=torch.tensor([0, -1]), n_classes=3), ValueError, r'\[0, 3\)'), (dict(labels=torch.tensor([0., 1.]), n_classes=3), TypeError, 'labels'),
    (dict(labels=torch.tensor([[0, 1]]), n_classes=3), TypeError, 'labels'), (dict(labels=torch.tensor([0]), n_classes=0), ValueError, 'n_classes'),
    (dict(labels=torch.tensor([0]), n_classes=2.), ValueError, 'n_classes'), (dict(counts=torch.tensor([0, 0])), ValueError, 'no class'),
    (dict(counts=torch.tensor([1., -1.])), ValueError, 'counts'), (dict(counts=torch.tensor([1., float('nan')])), ValueError, 'counts'),
    (dict(counts=torch.tensor([[1, 2]])), ValueError, 'counts'), (dict(counts=torch.tensor([1, 2]), n_classes=3), ValueError, 'n_classes'),
    (dict(counts=torch.tensor([1, 2]), lo=.6, hi=.5), ValueError, 'lo'), (dict(counts=torch.tensor([1, 2]), hi=4.), ValueError, '`hi`'),
    (dict(counts=torch.tensor([1, 2]), lo=-.1), ValueError, '`lo`'), (dict(counts=torch.tensor([1, 2]), lo='0'), TypeError, '`lo`'),
])
def test_dynamic_margins_bad_input(kw, exc, match):
    with pytest.raises(exc, match=match): dynamic_margins(**kw)

def test_train_labels_fastai_datasets():
    "Any fastai `Datasets`: labels come from the label pipeline alone"
    from fastai.data.all import Datasets, Categorize, DataLoaders
    dsets = Datasets(list(range(12)), [[lambda o: torch.tensor(float(o))], [lambda o: 'abc'[o % 3], Categorize()]], splits=[list(range(9)), list(range(9, 12))])
    dls = dsets.dataloaders(bs=4)
    assert train_labels(dls).tolist() == [i % 3 for i in range(9)]

# ----------------------------------------------------------------------------------------------------
# CurricularFace
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0., .25, .75, -.125])  # exact in the float32 buffer
@pytest.mark.parametrize("m,s", [(.5, 64.), (.3, 10.), (2.8, 20.)])
def test_curricular_values_and_gradients(t, m, s):
    cos, targ = some_cos(), torch.randint(0, 5, (8,))
    cos[0, targ[0]] = -0.99  # θ_y past π − m for m = .3, .5: the fallback
    f = CurricularFaceLoss(m=m, s=s, reduction='none')
    f.t.fill_(t)
    f.eval()  # t stays put
    c = cos.clone().requires_grad_()
    l = f(c, targ)
    ref = curricular_rows(cos.tolist(), targ.tolist(), m, s, t)
    torch.testing.assert_close(l, torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    (l*W).sum().backward()
    fd = fd_grad(lambda x: sum(w*v for w,v in zip(W.tolist(), curricular_rows(x, targ.tolist(), m, s, t))), cos)
    torch.testing.assert_close(c.grad, fd, rtol=1e-5, atol=1e-5)

def test_curricular_t0_is_arcface_for_easy_negatives():
    "With t = 0 and every negative below the margined target, CurricularFace is ArcFace"
    cos = torch.tensor([[0.95, 0.1, -0.3], [0.0, 0.9, 0.2], [-0.5, 0.3, 0.99]], dtype=torch.float64)
    targ = torch.tensor([0, 1, 2])
    with torch.no_grad():
        torch.testing.assert_close(CurricularFaceLoss(s=30.)(cos, targ), ArcFaceLoss(m=.5, s=30.)(cos, targ), rtol=1e-12, atol=1e-12)
        hard = torch.tensor([[0.5, 0.45, 0.]], dtype=torch.float64)  # cos(60° + 28.6°) = 0.02 < 0.45: hard
        assert not torch.allclose(CurricularFaceLoss(s=30.)(hard, torch.tensor([0])), ArcFaceLoss(s=30.)(hard, torch.tensor([0])))

def test_curricular_running_t_step_by_step():
    f = CurricularFaceLoss(momentum=0.1)
    t = 0.
    for step in range(5):
        cos, targ = some_cos(6, 4), torch.randint(0, 4, (6,))
        f(cos.requires_grad_(), targ)
        t = 0.9*t + 0.1*sum(cos[i, y].item() for i,y in enumerate(targ.tolist()))/6
        assert f.t.item() == pytest.approx(t, abs=1e-6), step
    frozen = f.t.clone()
    with torch.no_grad(): f(some_cos(6, 4), torch.randint(0, 4, (6,)))  # validation: no update
    f.eval(); f(some_cos(6, 4), torch.randint(0, 4, (6,)))               # eval mode: no update
    assert torch.equal(f.t, frozen) and 't' in f.state_dict()

def test_curricular_t_used_after_update():
    "The batch's own mean enters t before the modulation, as in the paper (t⁽ᵏ⁾ is used in step k)"
    cos, targ = some_cos(6, 4, lo=.2, hi=.95), torch.randint(0, 4, (6,))
    f = CurricularFaceLoss(s=10., momentum=1., reduction='none')
    l = f(cos, targ)
    r = sum(cos[i, y].item() for i,y in enumerate(targ.tolist()))/6
    torch.testing.assert_close(l.detach(), torch.tensor(curricular_rows(cos.tolist(), targ.tolist(), .5, 10., r), dtype=torch.float64))

# ----------------------------------------------------------------------------------------------------
# AdaFace
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m,h,s,mu,sigma", [(.4, .333, 64., 20., 100.), (.4, 1., 10., 10., 5.), (.6, 3., 30., 12., 2.)])
def test_adaface_values_and_gradients(m, h, s, mu, sigma):
    cos, targ = some_cos(), torch.randint(0, 5, (8,))
    cos[0, targ[0]] = -0.99
    norms = torch.tensor([0., 1e-4, 3., 9., 12., 15., 99., 1e4], dtype=torch.float64)  # across both clips
    f = AdaFaceLoss(m=m, h=h, s=s, reduction='none').eval()
    f.mu.fill_(mu); f.sigma.fill_(sigma)
    c, nr = cos.clone().requires_grad_(), norms.clone().requires_grad_()
    l = f(c, targ, nr)
    ref = adaface_rows(cos.tolist(), targ.tolist(), norms.tolist(), m, h, s, mu, sigma)
    torch.testing.assert_close(l, torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-9)  # ẑ in float64 for float64 input
    (l*W).sum().backward()
    fd = fd_grad(lambda x: sum(w*v for w,v in zip(W.tolist(), adaface_rows(x, targ.tolist(), norms.tolist(), m, h, s, mu, sigma))), cos)
    torch.testing.assert_close(c.grad, fd, rtol=1e-4, atol=1e-4)
    assert nr.grad is None  # the norm is detached: a quality proxy, not trained

def test_adaface_h0_is_cosface():
    cos, targ, norms = some_cos(), torch.randint(0, 5, (8,)), torch.rand(8, dtype=torch.float64)*50
    with torch.no_grad():
        torch.testing.assert_close(AdaFaceLoss(h=0., m=.4, s=30.)(cos, targ, norms), CosFaceLoss(m=.4, s=30.)(cos, targ), rtol=1e-12, atol=1e-12)

def test_adaface_extremes_are_arcface_and_shifted_cosface():
    "ẑ = −1 gives ArcFace's cos(θ + m); ẑ = +1 gives cos(θ − m) − 2m"
    cos, targ = some_cos(lo=-.5, hi=.9), torch.randint(0, 5, (8,))
    f = AdaFaceLoss(m=.4, h=1., s=10., reduction='none').eval()
    f.mu.fill_(10.); f.sigma.fill_(1.)
    with torch.no_grad():
        torch.testing.assert_close(f(cos, targ, torch.full((8,), 1e-3, dtype=torch.float64)), ArcFaceLoss(m=.4, s=10., reduction='none')(cos, targ))
        th = torch.acos(cos[torch.arange(8), targ])
        exp = F.cross_entropy(10*cos.scatter(1, targ[:,None], (torch.cos((th - .4).clamp_min(1e-3)) - .8)[:,None]), targ, reduction='none')
        torch.testing.assert_close(f(cos, targ, torch.full((8,), 50., dtype=torch.float64)), exp)

def test_adaface_running_stats_step_by_step():
    f = AdaFaceLoss(momentum=0.2)
    mu, sigma = 20., 100.
    for step,n in enumerate([6, 5, 1, 7]):
        norms = torch.rand(n, dtype=torch.float64)*30
        f(some_cos(n, 4).requires_grad_(), torch.randint(0, 4, (n,)), norms)
        a = norms.clamp(1e-3, 100).tolist()
        mean = sum(a)/n
        mu = 0.8*mu + 0.2*mean
        if n > 1: sigma = 0.8*sigma + 0.2*math.sqrt(sum((v - mean)**2 for v in a)/(n - 1))  # a batch of one leaves σ alone
        assert (f.mu.item(), f.sigma.item()) == (pytest.approx(mu, rel=1e-6), pytest.approx(sigma, rel=1e-6)), step
    frozen = f.state_dict()
    with torch.no_grad(): f(some_cos(6, 4), torch.randint(0, 4, (6,)), torch.rand(6)*30)
    f.eval(); f(some_cos(6, 4), torch.randint(0, 4, (6,)), torch.rand(6)*30)
    assert all(torch.equal(v, f.state_dict()[k]) for k,v in frozen.items()) and set(frozen) == {'mu', 'sigma'}

def test_adaface_norms_from_head_attribute():
    head = ArcFaceHead(6, 4, norms=True)
    x, targ = torch.randn(5, 6)*7, torch.randint(0, 4, (5,))
    f = AdaFaceLoss(s=10.).eval()
    torch.testing.assert_close(f(head(x), targ), f(head(x).detach(), targ, x.norm(dim=1)))

@pytest.mark.parametrize("norms,exc,match", [(None, ValueError, 'norms=True'), ([1., 2., 3.], TypeError, 'norms'),
                                             (torch.ones(2), ValueError, 'shape'), (torch.ones(3, 1), ValueError, 'shape'),
                                             (torch.tensor([1., float('nan'), 2.]), ValueError, 'finite'),
                                             (torch.tensor([1., -1., 2.]), ValueError, 'non-negative'),
                                             (torch.tensor([1, 2, 3]), TypeError, 'norms')])
@pytest.mark.parametrize("cls", [AdaFaceLoss, MagFaceLoss])
def test_norms_bad_input(cls, norms, exc, match):
    with pytest.raises(exc, match=match): cls()(some_cos(3, 4), torch.tensor([0, 1, 2]), norms)

# ----------------------------------------------------------------------------------------------------
# ElasticFace
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,ref", [('arc', ArcFaceLoss(m=.5, s=20.)), ('cos', CosFaceLoss(m=.35, s=20.))])
def test_elastic_sigma0_is_arcface_cosface(kind, ref):
    cos, targ = some_cos(), torch.randint(0, 5, (8,))
    c1, c2 = cos.clone().requires_grad_(), cos.clone().requires_grad_()
    l1, l2 = ElasticFaceLoss(kind=kind, sigma=0., s=20.)(c1, targ), ref(c2, targ)
    torch.testing.assert_close(l1, l2, rtol=1e-12, atol=1e-12)
    l1.backward(); l2.backward()
    torch.testing.assert_close(c1.grad, c2.grad, rtol=1e-12, atol=1e-12)

@pytest.mark.parametrize("kind", ['arc', 'cos'])
@pytest.mark.parametrize("plus", [False, True])
def test_elastic_values_and_gradients_with_the_drawn_margins(kind, plus):
    "Draw the margins with a seed, then recompute the loss from the paper with those margins"
    cos, targ = some_cos(), torch.randint(0, 5, (8,))
    f = ElasticFaceLoss(kind=kind, plus=plus, sigma=.2, s=16., reduction='none')
    torch.manual_seed(7); d = f.draw(cos[torch.arange(8), targ])
    c = cos.clone().requires_grad_()
    torch.manual_seed(7); l = f(c, targ)
    ref = lambda x: elastic_rows(x, targ.tolist(), d.tolist(), kind, 16.)
    torch.testing.assert_close(l, torch.tensor(ref(cos.tolist()), dtype=torch.float64), rtol=1e-9, atol=1e-9)
    (l*W).sum().backward()
    torch.testing.assert_close(c.grad, fd_grad(lambda x: sum(w*v for w,v in zip(W.tolist(), ref(x))), cos), rtol=1e-5, atol=1e-5)

def test_elastic_draws_are_normal_clipped_and_seeded():
    torch.manual_seed(0); d = ElasticFaceLoss(sigma=.05).draw(torch.zeros(20000))
    assert d.mean().item() == pytest.approx(.5, abs=2e-3) and d.std().item() == pytest.approx(.05, abs=2e-3)
    wide = ElasticFaceLoss(sigma=3.).draw(torch.zeros(5000))
    assert wide.min() == 0 and wide.max() < PI and (wide == 0).any()
    assert ElasticFaceLoss(kind='cos', sigma=3.).draw(torch.zeros(5000)).min() == 0
    cos, targ = some_cos(), torch.randint(0, 5, (8,))
    assert torch.isfinite(ElasticFaceLoss(sigma=3.)(cos.requires_grad_(), targ))
    torch.manual_seed(1); a = ElasticFaceLoss()(cos, targ)
    torch.manual_seed(1); b = ElasticFaceLoss()(cos, targ)
    c = ElasticFaceLoss()(cos, targ)
    assert a.item() == b.item() != c.item()

def test_elastic_plus_assigns_by_rank():
    "ElasticFace+ per the paper: the farther from the centre (smaller cos θ_y), the larger the margin"
    cos_y = torch.rand(50)
    torch.manual_seed(2); d = ElasticFaceLoss(plus=True, sigma=.1).draw(cos_y)
    torch.manual_seed(2); raw = ElasticFaceLoss(plus=False, sigma=.1).draw(cos_y)
    assert torch.equal(d.sort().values, raw.sort().values)
    order = cos_y.argsort()  # from farthest to closest
    assert (d[order].diff() <= 0).all()
    torch.manual_seed(0); ex = ElasticFaceLoss(plus=True).draw(torch.tensor([.1, .9, .5]))
    assert ex[0] > ex[2] > ex[1]  # the official code's inverted indexing would give ex[1] the largest

def test_elastic_eval_uses_mean_margin_and_no_rng():
    cos, targ = some_cos(), torch.randint(0, 5, (8,))
    state = torch.get_rng_state()
    with torch.no_grad(): l = ElasticFaceLoss(s=10.)(cos, targ)
    assert torch.equal(state, torch.get_rng_state())
    torch.testing.assert_close(l, ArcFaceLoss(s=10.)(cos, targ))
    torch.testing.assert_close(ElasticFaceLoss(kind='cos', s=10.).eval()(cos, targ), CosFaceLoss(m=.35, s=10.)(cos, targ))

# ----------------------------------------------------------------------------------------------------
# MagFace
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [dict(l_a=10., u_a=110., l_m=.45, u_m=.8, lambda_g=35., s=64.),
                               dict(l_a=1., u_a=51., l_m=.45, u_m=1., lambda_g=5., s=30.), dict(l_a=2., u_a=4., l_m=.1, u_m=2.9, lambda_g=500., s=10.)])
def test_magface_values_and_gradients(p):
    cos, targ = some_cos(), torch.randint(0, 5, (8,))
    cos[0, targ[0]] = -0.99
    norms = torch.linspace(.5, 130., 8, dtype=torch.float64)
    f = MagFaceLoss(**p, reduction='none')
    c, nr = cos.clone().requires_grad_(), norms.clone().requires_grad_()
    l = f(c, targ, nr)
    args = tuple(p.values())
    torch.testing.assert_close(l, torch.tensor(magface_rows(cos.tolist(), targ.tolist(), norms.tolist(), *args), dtype=torch.float64), rtol=1e-9, atol=1e-9)
    (l*W).sum().backward()
    tot = lambda x, n: sum(w*v for w,v in zip(W.tolist(), magface_rows(x, targ.tolist(), n, *args)))
    torch.testing.assert_close(c.grad, fd_grad(lambda x: tot(x, norms.tolist()), cos), rtol=1e-5, atol=1e-5)
    inside = (norms > p['l_a']) & (norms < p['u_a'])
    torch.testing.assert_close(nr.grad[inside], fd_grad(lambda n: tot(cos.tolist(), n), norms)[inside], rtol=1e-5, atol=1e-5)
    assert (nr.grad[~inside] == 0).all()  # clipped norms: no gradient, as in the official code

def test_magface_lambda_bound():
    assert MagFaceLoss().min_lambda_g == pytest.approx(22.586666666666673)  # the official trainer prints this minimum
    assert MagFaceLoss.finetune().min_lambda_g == pytest.approx(64*.55/50*51**2/(51**2 - 1))
    with pytest.warns(UserWarning, match='lower bound'): MagFaceLoss(lambda_g=20.)
    with warnings.catch_warnings():
        warnings.simplefilter('error'); MagFaceLoss(); MagFaceLoss.finetune()
    ft = MagFaceLoss.finetune(s=30.)
    assert (ft.l_a, ft.u_a, ft.l_m, ft.u_m, ft.lambda_g, ft.s) == (1., 51., .45, 1., 5., 30.)

def test_magface_regulariser_raises_small_norms():
    "Below u_a, g'(a) = 1/u_a² − 1/a² < 0: for a well-classified sample, descent raises its norm"
    cos, targ = torch.tensor([[0.99, -0.5, -0.5]], dtype=torch.float64), torch.tensor([0])
    nr = torch.tensor([30.], dtype=torch.float64, requires_grad=True)
    MagFaceLoss()(cos, targ, nr).backward()
    assert nr.grad.item() < 0

# ----------------------------------------------------------------------------------------------------
# Finite gradients at the edges
# ----------------------------------------------------------------------------------------------------
EDGE_LOSSES = [CurricularFaceLoss(), AdaFaceLoss(), ElasticFaceLoss(), ElasticFaceLoss(kind='cos', plus=True), MagFaceLoss(),
               CombinedMarginLoss(m2=torch.tensor([.05, .5, 0., 3.]))]

@pytest.mark.parametrize("f", EDGE_LOSSES, ids=lambda f: type(f).__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_gradients_at_cos_pm1_and_norm_bounds(f, dtype):
    cos = torch.tensor([[1., -1., 0., .5], [-1., 1., .2, 0.], [0., .3, 1., -1.], [.1, -1., 0., 1.], [1., 0., 0., -1.], [-1., 0., 1., 0.]], dtype=dtype).requires_grad_()
    targ = torch.tensor([0, 0, 2, 1, 0, 0])
    bounds = [1e-3, 100., 10., 110., 0., 1e6]  # AdaFace's clip, MagFace's [l_a, u_a], and beyond
    nr = torch.tensor(bounds, dtype=dtype, requires_grad=True)
    l = f(cos, targ, nr) if getattr(f, 'needs_norms', False) else f(cos, targ)
    l.backward()
    assert torch.isfinite(l) and torch.isfinite(cos.grad).all()
    if getattr(f, 'needs_norms', False) and nr.grad is not None: assert torch.isfinite(nr.grad).all()

# ----------------------------------------------------------------------------------------------------
# The fastai contract, for every loss
# ----------------------------------------------------------------------------------------------------
def make(name):
    return dict(curricular=lambda: CurricularFaceLoss(s=12.), ada=lambda: AdaFaceLoss(s=12.), elastic=lambda: ElasticFaceLoss(s=12.),
                elastic_cos_plus=lambda: ElasticFaceLoss(kind='cos', plus=True, s=12.), mag=lambda: MagFaceLoss(s=12.),
                dynamic=lambda: CombinedMarginLoss(s=12., m2=dynamic_margins(counts=torch.tensor([9, 1, 40, 3, 3]))))[name]()
NAMES = ['curricular', 'ada', 'elastic', 'elastic_cos_plus', 'mag', 'dynamic']

def call(f, cos, targ, norms):
    return f(cos, targ, norms) if getattr(f, 'needs_norms', False) else f(cos, targ)

@pytest.mark.parametrize("name", NAMES)
def test_contract(name):
    f = make(name)
    cos, targ, norms = some_cos(6, 5), torch.randint(0, 5, (6,)), torch.rand(6, dtype=torch.float64)*40 + 5
    assert f.y_int
    torch.testing.assert_close(f.activation(cos), F.softmax(12*cos.float(), 1))
    assert torch.equal(f.decodes(cos), cos.argmax(1))
    f.eval()  # fixed statistics and margins: the three reductions see the same losses
    with torch.no_grad():
        f.reduction = 'sum'; s_ = call(f, cos, targ, norms)
        f.reduction = 'mean'; m_ = call(f, cos, targ, norms)
    f.reduction = 'none'
    with torch.no_grad(): none = call(f, cos, targ, norms)
    assert none.shape == (6,) and s_.item() == pytest.approx(none.sum().item()) and m_.item() == pytest.approx(none.mean().item())
    with pytest.raises(ValueError, match='reduction'): f.reduction = 'avg'

@pytest.mark.parametrize("name", NAMES)
def test_pickle_keeps_buffers_and_values(name):
    f = make(name)
    cos, targ, norms = some_cos(6, 5), torch.randint(0, 5, (6,)), torch.rand(6, dtype=torch.float64)*40 + 5
    call(f, cos.requires_grad_(), targ, norms)  # a training step moves the statistics
    g = pickle.loads(pickle.dumps(f))
    assert type(g) is type(f) and all(torch.equal(a, b) for a,b in zip(f.buffers(), g.buffers()))
    f.eval(); g.eval()
    with torch.no_grad(): torch.testing.assert_close(call(g, cos, targ, norms), call(f, cos, targ, norms), rtol=0, atol=0)

@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_float32_maths(name):
    f = make(name).eval()
    cos, targ, norms = some_cos(6, 5).float(), torch.randint(0, 5, (6,)), torch.rand(6)*40 + 5
    ref = call(f, cos, targ, norms)
    with torch.autocast('cpu', dtype=torch.bfloat16): got = call(f, cos.bfloat16(), targ, norms.bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=.05, atol=.05)  # only the inputs were rounded to bf16

@pytest.mark.parametrize("make_bad,exc,match", [
    (lambda: CurricularFaceLoss(m=4.), ValueError, '`m`'), (lambda: CurricularFaceLoss(s=0.), ValueError, '`s`'),
    (lambda: CurricularFaceLoss(momentum=0.), ValueError, 'momentum'), (lambda: CurricularFaceLoss(m='.5'), TypeError, '`m`'),
    (lambda: CurricularFaceLoss(reduction='avg'), ValueError, 'reduction'),
    (lambda: AdaFaceLoss(h=-1.), ValueError, '`h`'), (lambda: AdaFaceLoss(m=float('nan')), ValueError, '`m`'),
    (lambda: AdaFaceLoss(momentum=1.5), ValueError, 'momentum'), (lambda: AdaFaceLoss(s=True), TypeError, '`s`'),
    (lambda: ElasticFaceLoss(kind='sphere'), ValueError, 'kind'), (lambda: ElasticFaceLoss(sigma=-.1), ValueError, 'sigma'),
    (lambda: ElasticFaceLoss(m=3.2), ValueError, '`m2`'), (lambda: ElasticFaceLoss(kind='cos', m=-.1), ValueError, '`m`'),
    (lambda: ElasticFaceLoss(s=-1.), ValueError, '`s`'), (lambda: ElasticFaceLoss(sigma=None), TypeError, 'sigma'),
    (lambda: MagFaceLoss(l_a=20., u_a=10.), ValueError, 'l_a'), (lambda: MagFaceLoss(l_m=.9, u_m=.5), ValueError, 'l_m'),
    (lambda: MagFaceLoss(l_a=0.), ValueError, 'l_a'), (lambda: MagFaceLoss(u_m=3.5), ValueError, 'u_m'),
    (lambda: MagFaceLoss(lambda_g=-1.), ValueError, 'lambda_g'), (lambda: MagFaceLoss(s=float('inf')), ValueError, '`s`'),
])
def test_bad_arguments(make_bad, exc, match):
    with pytest.raises(exc, match=match): make_bad()

def test_bad_assignment_later():
    f = AdaFaceLoss()
    with pytest.raises(ValueError, match='`m`'): f.m = -1.
    with pytest.raises(ValueError, match='`m2`'): ElasticFaceLoss().m2 = 4.

@pytest.mark.parametrize("name", NAMES)
def test_bad_cos_and_targets(name):
    f = make(name)
    with pytest.raises(ValueError, match='targ'): call(f, some_cos(3, 5), torch.tensor([0, 1, 5]), torch.ones(3))
    with pytest.raises(TypeError, match='cos'): call(f, [[0.1]*5]*3, torch.tensor([0, 1, 2]), torch.ones(3))
    bad = some_cos(3, 5); bad[0, 0] = float('nan')
    with pytest.raises(ValueError, match='cos'): call(f, bad, torch.tensor([0, 1, 2]), torch.ones(3))

def test_presets_build_fresh_losses():
    assert set(FAMILY_PRESETS) == {'curricularface', 'adaface', 'elasticface', 'elasticface-cos', 'magface', 'dynamic-arcface'}
    types = {k: type(f(None).get('loss_func')).__name__ for k,f in FAMILY_PRESETS.items()}
    assert types == dict(curricularface='CurricularFaceLoss', adaface='AdaFaceLoss', elasticface='ElasticFaceLoss',
                         **{'elasticface-cos': 'ElasticFaceLoss'}, magface='MagFaceLoss', **{'dynamic-arcface': 'NoneType'})
    assert FAMILY_PRESETS['dynamic-arcface'](None) == dict(m2='dynamic')  # `cosine_learner`'s own scale and warm-up
    assert FAMILY_PRESETS['adaface'](None)['loss_func'] is not FAMILY_PRESETS['adaface'](None)['loss_func']
    assert all(f(None).get('loss_func', CombinedMarginLoss()).s == 30 for f in FAMILY_PRESETS.values())  # no data: the papers' 30
    class Classes: c = 100_000
    for k,f in FAMILY_PRESETS.items():  # with data: `auto_scale` of its classes
        if k != 'dynamic-arcface': assert f(Classes())['loss_func'].s == pytest.approx(math.sqrt(2)*math.log(99_999)), k
    Classes.c = 700
    assert FAMILY_PRESETS['magface'](Classes())['loss_func'].s == 10.

# ----------------------------------------------------------------------------------------------------
# Data-parallel: the statistics stay identical on every process
# ----------------------------------------------------------------------------------------------------
def _ddp_worker(rank, world, init, out):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=init, rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    cf, ada = CurricularFaceLoss(momentum=.3), AdaFaceLoss(momentum=.3)
    for _ in range(3):
        cos, targ, norms = torch.rand(8, 4, generator=g)*1.8 - .9, torch.randint(0, 4, (8,), generator=g), torch.rand(8, generator=g)*40
        part = slice(4*rank, 4*rank + 4)
        cf(cos[part].requires_grad_(), targ[part]); ada(cos[part].requires_grad_(), targ[part], norms[part])
    torch.save([cf.t, ada.mu, ada.sigma], f"{out}/{rank}.pt")
    dist.destroy_process_group()

def test_statistics_identical_across_processes(tmp_path):
    mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path}/init", str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path/'0.pt'), torch.load(tmp_path/'1.pt')
    assert all(torch.equal(a, b) for a,b in zip(r0, r1))
    g = torch.Generator().manual_seed(0)
    cf, ada = CurricularFaceLoss(momentum=.3), AdaFaceLoss(momentum=.3)
    for _ in range(3):  # one process on the whole batch: the same statistics
        cos, targ, norms = torch.rand(8, 4, generator=g)*1.8 - .9, torch.randint(0, 4, (8,), generator=g), torch.rand(8, generator=g)*40
        cf(cos.requires_grad_(), targ); ada(cos, targ, norms)
    for a,b in zip(r0, [cf.t, ada.mu, ada.sigma]): assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_magface_easy_margin():
    "easy_margin=True is the official MagLinear's default: cos(θ_y + m(a)) where cos θ_y > 0, cos θ_y elsewhere; the default keeps the margin"
    cos = some_cos(8, 5)
    targ = torch.randint(0, 5, (8,))
    cos[:4, :] = cos[:4, :].abs(); cos[4:, :] = -cos[4:, :].abs()  # targets with cos θ_y > 0, then <= 0
    norms = torch.rand(8, dtype=torch.float64)*100 + 10
    def official(c, y, a, f):
        m = f.margin(a.clamp(f.l_a, f.u_a))
        cy = c[torch.arange(len(y)), y]
        t = torch.where(cy > 0, torch.cos(torch.acos(cy) + m), cy)
        return F.cross_entropy(f.s*c.scatter(1, y[:,None], t[:,None]), y, reduction='none') + f.lambda_g*f.g(a.clamp(f.l_a, f.u_a))
    f = MagFaceLoss(s=16., easy_margin=True, reduction='none')
    torch.testing.assert_close(f(cos, targ, norms), official(cos, targ, norms, f), rtol=1e-12, atol=1e-12)
    plain = MagFaceLoss(s=16., reduction='none')(cos, targ, norms)
    torch.testing.assert_close(plain[:4], f(cos, targ, norms)[:4], rtol=1e-12, atol=1e-12)
    assert (plain[4:] > f(cos, targ, norms)[4:]).all()  # the default margins every sample
    assert 'easy_margin=True' in repr(f) and 'easy_margin' not in repr(MagFaceLoss())
