"""The fused `ArcFaceHead` + `CombinedMarginLoss` (hand-written backward passes) against the straightforward formulation.

The reference normalises the centre matrix, applies the margin through a full one-hot copy of the logits and calls
`F.cross_entropy`, all under plain autograd: the textbook way, and what `benchmarks/head_loss.py` calls `naive`."""
import math
import pytest, torch, torch.nn.functional as F

from cosine_losses.heads import ArcFaceHead
from cosine_losses.losses import CombinedMarginLoss


def straight_psi(cos_y, m1, m2, m3, easy_margin):
    "ψ(θ) − m3 written out directly from the papers (vectorised; plain `acos`)"
    th = torch.acos(cos_y.clamp(-1, 1))
    if m1 == 1: psi = torch.where(th <= math.pi - m2, torch.cos(th + m2), cos_y - max(m2*math.sin(m2), 1 - math.cos(m2)))
    else:
        k = torch.floor((m1*th + m2)/math.pi)
        psi = (-1)**k*torch.cos(m1*th + m2) - 2*k
    if easy_margin: psi = torch.where(cos_y > 0, psi, cos_y)
    return psi - m3


def straight_loss(x, w, y, s, m1=1., m2=0.5, m3=0., easy_margin=False, detach_margin=False, reduction='mean', k=1):
    "Normalise both, margin a one-hot copy of the logits, cross-entropy"
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).t()
    if k > 1: cos = cos.view(len(x), -1, k).amax(-1)
    onehot = F.one_hot(y, cos.shape[1]).to(cos.dtype)
    cos_y = (cos*onehot).sum(1)
    t = straight_psi(cos_y, m1, m2, m3, easy_margin)
    if detach_margin: t = cos_y + (t - cos_y).detach()
    return F.cross_entropy(s*(cos*(1 - onehot) + t[:, None]*onehot), y, reduction=reduction)


def both(n, d, c, dtype, m=(1., 0.5, 0.), k=1, **kw):
    "Loss and gradients (x, W) of the library and of the reference, on the same random batch"
    head = ArcFaceHead(d, c, k=k).to(dtype)
    x = torch.randn(n, d, dtype=dtype)*torch.rand(n, 1, dtype=dtype).add(0.1)*5   # features of assorted norms
    with torch.no_grad(): head.weight.mul_(torch.rand(c*k, 1, dtype=dtype).add(0.1)*3)   # centres too
    y = torch.randint(0, c, (n,))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    wb = head.weight.detach().clone().requires_grad_()
    la = CombinedMarginLoss(30., *m, **kw)(head(xa), y)
    lb = straight_loss(xb, wb, y, 30., *m, k=k, **kw)
    up = torch.rand_like(la)   # an arbitrary upstream gradient for reduction='none'
    (la*up).sum().backward(); (lb*up).sum().backward()
    return (la.detach(), xa.grad, head.weight.grad), (lb.detach(), xb.grad, wb.grad)


def close(a, b, rtol, atol_frac):
    "assert_close with the absolute tolerance a fraction of the tensor's largest value"
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol_frac*b.abs().max().item())


def test_float32_values_and_gradients_at_c1000():
    "The benchmark's setting scaled down (N=256, d=128, C=1000, ArcFace m=0.5, s=30): equal within float32 tolerance"
    (la, gxa, gwa), (lb, gxb, gwb) = both(256, 128, 1000, torch.float32)
    assert la.dtype == gxa.dtype == gwa.dtype == torch.float32
    close(la, lb, 1e-5, 1e-6)
    close(gxa, gxb, 1e-4, 5e-6)
    close(gwa, gwb, 1e-4, 5e-6)


MARGINS = [((1., 0.5, 0.), {}), ((1., 0., 0.35), {}), ((1.35, 0., 0.), {}), ((1., 0.4, 0.2), {}), ((2.5, 0.3, 0.1), {}),
           ((1., 0.5, 0.), dict(easy_margin=True)), ((1., 0.5, 0.), dict(detach_margin=True)), ((1.35, 0., 0.), dict(detach_margin=True))]

@pytest.mark.parametrize("reduction", ['mean', 'sum', 'none'])
@pytest.mark.parametrize("m,kw", MARGINS, ids=[f"{m}{'-' + next(iter(kw)) if kw else ''}" for m,kw in MARGINS])
def test_float64_exact_every_margin(m, kw, reduction):
    "In float64 the fused passes agree with autograd on the straightforward formulation to rounding, for every margin"
    (la, gxa, gwa), (lb, gxb, gwb) = both(64, 32, 1000, torch.float64, m, reduction=reduction, **kw)
    close(la, lb, 1e-10, 1e-12)
    close(gxa, gxb, 1e-8, 1e-10)
    close(gwa, gwb, 1e-8, 1e-10)


def test_subcentres_float32():
    (la, gxa, gwa), (lb, gxb, gwb) = both(128, 64, 300, torch.float32, k=3)
    close(la, lb, 1e-5, 1e-6)
    close(gxa, gxb, 1e-4, 5e-6)
    close(gwa, gwb, 1e-4, 5e-6)


def test_bf16_autocast_close_to_float32_reference():
    "Under bf16 autocast the products run in bf16: loss and gradients stay within bf16 rounding of the float32 reference"
    head = ArcFaceHead(64, 500)
    x, y = torch.randn(128, 64), torch.randint(0, 500, (128,))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    wb = head.weight.detach().clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16): la = CombinedMarginLoss(30.)(head(xa), y)
    lb = straight_loss(xb, wb, y, 30.)
    la.backward(); lb.backward()
    assert la.dtype == head.weight.grad.dtype == torch.float32
    assert la.item() == pytest.approx(lb.item(), rel=2e-2)
    for a,b in (xa.grad, xb.grad), (head.weight.grad, wb.grad): assert ((a - b).norm()/b.norm()).item() < 2e-2


@pytest.mark.parametrize("which", ['head', 'loss'])
def test_double_backward_is_refused(which):
    "The hand-written backward passes are not differentiable: create_graph=True must fail loudly, not give a constant gradient"
    head, loss = ArcFaceHead(8, 5).double(), CombinedMarginLoss(10.)
    x, y = torch.randn(6, 8, dtype=torch.float64, requires_grad=True), torch.randint(0, 5, (6,))
    if which == 'head': out, inp = loss(head(x), y), x
    else:
        inp = head(x).detach().requires_grad_()
        out = loss(inp, y)
    with pytest.raises(RuntimeError, match='double backward'): torch.autograd.grad(out, inp, create_graph=True)


def test_retain_graph_backward_twice():
    "Saved tensors are not modified by the backward passes: a second backward gives the same gradients"
    head, loss = ArcFaceHead(16, 40), CombinedMarginLoss()
    x, y = torch.randn(20, 16, requires_grad=True), torch.randint(0, 40, (20,))
    l = loss(head(x), y)
    l.backward(retain_graph=True)
    g1, w1 = x.grad.clone(), head.weight.grad.clone()
    l.backward()
    torch.testing.assert_close(x.grad, 2*g1)
    torch.testing.assert_close(head.weight.grad, 2*w1)


def test_per_class_margins_fused_equals_straight():
    "Per-class m2 and m3 (dynamic margins) through the fused passes: float64 values and gradients equal the one-hot formulation"
    n, d, c = 64, 16, 50
    head = ArcFaceHead(d, c).double()
    m2, m3 = torch.rand(c, dtype=torch.float64)*.6, torch.rand(c, dtype=torch.float64)*.2
    x, y = torch.randn(n, d, dtype=torch.float64)*3, torch.randint(0, c, (n,))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    wb = head.weight.detach().clone().requires_grad_()
    la = CombinedMarginLoss(30., m2=m2, m3=m3, reduction='none')(head(xa), y)
    cos = F.normalize(xb, dim=1) @ F.normalize(wb, dim=1).t()
    onehot = F.one_hot(y, c).to(cos.dtype)
    cos_y, m2y, m3y = (cos*onehot).sum(1), m2[y], m3[y]
    th = torch.acos(cos_y.clamp(-1, 1))
    t = torch.where(th <= math.pi - m2y, torch.cos(th + m2y), cos_y - torch.maximum(m2y*torch.sin(m2y), 1 - torch.cos(m2y))) - m3y
    lb = F.cross_entropy(30*(cos*(1 - onehot) + t[:, None]*onehot), y, reduction='none')
    up = torch.rand(n, dtype=torch.float64)
    (la*up).sum().backward(); (lb*up).sum().backward()
    close(la.detach(), lb.detach(), 1e-10, 1e-12)
    close(xa.grad, xb.grad, 1e-8, 1e-10)
    close(head.weight.grad, wb.grad, 1e-8, 1e-10)
