"""Tests of `cosine_losses.losses` against independent, hand-written references.

The reference for every logit is the scalar `math`-module function `ref_psi` below, not the library's
tensor code; special cases are checked against the textbook formulas of each paper."""
import math, pickle
import pytest, torch, torch.nn as nn, torch.nn.functional as F

from cosine_losses.losses import (check_margins, target_logit, margin_logits, CombinedMarginLoss,
                                  ArcFaceLoss, CosFaceLoss, SphereFaceLoss)
from cosine_losses.heads import ArcFaceHead

PI = math.pi

# ----------------------------------------------------------------------------------------------------
# Scalar reference
# ----------------------------------------------------------------------------------------------------
def ref_psi(theta, m1, m2):
    "ψ(θ) of the combined margin, computed with the `math` module only"
    if m1 == 1:
        if theta <= PI - m2: return math.cos(theta + m2)
        return math.cos(theta) - max(m2*math.sin(m2), 1 - math.cos(m2))
    k = math.floor((m1*theta + m2)/PI)
    return (-1)**k * math.cos(m1*theta + m2) - 2*k

def ref_target(theta, s, m1, m2, m3): return s*(ref_psi(theta, m1, m2) - m3)

def ref_ce(logits, targs):
    "Mean cross-entropy of lists of float logits, by hand"
    tot = 0.
    for row,y in zip(logits, targs):
        mx = max(row)
        tot += mx + math.log(sum(math.exp(v - mx) for v in row)) - row[y]
    return tot/len(logits)

# (m1, m2, m3): ArcFace, CosFace, SphereFace (two), combined, non-integer m1 with m2 and m3, large m2
MARGINS = [(1., 0.5, 0.), (1., 0., 0.35), (1.35, 0., 0.), (4., 0., 0.), (1., 0.4, 0.2), (2.5, 0.3, 0.1), (1., 2.5, 0.)]
MARGIN_IDS = [f"m1={a}-m2={b}-m3={c}" for a,b,c in MARGINS]

ANGLES = list(range(180))                    # degrees, 0..179
NORMS  = [1e-3, 0.5, 1., 7., 250.]           # feature norms, cycled over the angles
# the other class centres: angle, norm (the target centre is exactly (1, 0))
OTHERS = [(1.3, 2.), (PI, 0.5), (-2.2, 3.)]
S = 30.

def features(dtype=torch.float32):
    return torch.tensor([[r*math.cos(math.radians(a)), r*math.sin(math.radians(a))]
                         for a,r in zip(ANGLES, NORMS*len(ANGLES))], dtype=dtype)

def centre_angles(row):
    "Angles of the 4 class centres with the target centre (angle 0) placed at `row`"
    phis = [phi for phi,_ in OTHERS]
    return phis[:row] + [0.] + phis[row:]

def make_head(row, dtype=torch.float32):
    "ArcFaceHead(2, 4) whose row `row` is exactly (1, 0); the other rows are not unit norm"
    rows = [(r*math.cos(phi), r*math.sin(phi)) for phi,r in OTHERS]
    rows = rows[:row] + [(1., 0.)] + rows[row:]
    head = ArcFaceHead(2, 4).to(dtype)
    with torch.no_grad(): head.weight.copy_(torch.tensor(rows, dtype=dtype))
    return head

def hand_logits(m, row, s=S):
    "List of hand-computed logit rows, one per angle in `ANGLES`"
    phis = centre_angles(row)
    out = []
    for a in ANGLES:
        th = math.radians(a)
        out.append([ref_target(th, s, *m) if j == row else s*math.cos(th - phi) for j,phi in enumerate(phis)])
    return out

def exact_cos(row, dtype=torch.float64):
    phis = centre_angles(row)
    return torch.tensor([[math.cos(math.radians(a) - phi) for phi in phis] for a in ANGLES], dtype=dtype)

def targets(row): return torch.full((len(ANGLES),), row, dtype=torch.long)

def some_cos(n=6, c=5, dtype=torch.float64, lo=-0.95, hi=0.95):
    return (torch.rand(n, c, dtype=dtype)*(hi - lo) + lo)

def test_reference_sanity():
    "The reference itself: ArcFace, CosFace and SphereFace values known in closed form"
    assert ref_psi(0.3, 1, 0.5) == pytest.approx(math.cos(0.8))
    assert ref_psi(PI, 1, 0.5) == pytest.approx(-1 - 0.5*math.sin(0.5))
    assert ref_psi(PI/3, 4, 0) == pytest.approx(-math.cos(4*PI/3) - 2)   # k = 1
    assert ref_psi(PI, 4, 0) == pytest.approx(-7)                          # k = 4 (ψ(π) = 1 − 2·m1)

# ----------------------------------------------------------------------------------------------------
# 1. Logits against hand values, through ArcFaceHead
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", [0, 3])
@pytest.mark.parametrize("m", MARGINS, ids=MARGIN_IDS)
def test_hand_logits_float64_exact_cos(m, row):
    "float64 cosines computed by `math`: logits and CE match the scalar reference to 1e-9"
    cos, y = exact_cos(row), targets(row)
    hand = hand_logits(m, row)
    logits = margin_logits(cos, y, S, *m)
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits/S, torch.tensor(hand, dtype=torch.float64)/S, rtol=0, atol=1e-9)
    loss = CombinedMarginLoss(S, *m)(cos, y)
    assert loss.item() == pytest.approx(ref_ce(hand, y.tolist()), rel=1e-9, abs=1e-9)
    # target_logit alone
    tl = target_logit(cos[:, row], *m)
    ref = torch.tensor([ref_psi(math.radians(a), m[0], m[1]) - m[2] for a in ANGLES], dtype=torch.float64)
    torch.testing.assert_close(tl, ref, rtol=0, atol=1e-9)

@pytest.mark.parametrize("m", MARGINS, ids=MARGIN_IDS)
def test_hand_logits_float64_through_head(m):
    "A float64 ArcFaceHead (head.double()) feeds float64 cosines: logits and CE to 1e-9"
    row = 2
    head, x, y = make_head(row, torch.float64), features(torch.float64), targets(row)
    cos = head(x)
    assert cos.dtype == torch.float64
    hand = hand_logits(m, row)
    logits = margin_logits(cos, y, S, *m)
    torch.testing.assert_close(logits/S, torch.tensor(hand, dtype=torch.float64)/S, rtol=0, atol=1e-9)
    loss = CombinedMarginLoss(S, *m)(cos, y)
    assert loss.item() == pytest.approx(ref_ce(hand, y.tolist()), rel=1e-9, abs=1e-9)

@pytest.mark.parametrize("row", [0, 3])
@pytest.mark.parametrize("m", MARGINS, ids=MARGIN_IDS)
def test_hand_logits_float32_through_head(m, row):
    head, x, y = make_head(row), features(), targets(row)
    cos = head(x)
    assert cos.dtype == torch.float32
    hand = torch.tensor(hand_logits(m, row), dtype=torch.float64)
    logits = margin_logits(cos, y, S, *m)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.double()/S, hand/S, rtol=0, atol=1e-5)
    loss = CombinedMarginLoss(S, *m)(cos, y)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_ce(hand.tolist(), y.tolist()), rel=1e-5, abs=2*S*1e-5)

@pytest.mark.parametrize("m", MARGINS, ids=MARGIN_IDS)
def test_hand_logits_bf16_autocast(m):
    row = 1
    head, x, y = make_head(row), features(), targets(row)
    loss_fn = CombinedMarginLoss(S, *m)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        cos = head(x)
        logits = margin_logits(cos, y, S, *m)
        loss = loss_fn(cos, y)
    assert cos.dtype == logits.dtype == loss.dtype == torch.float32
    # cosines: loose, bf16 matmul
    torch.testing.assert_close(cos.double(), exact_cos(row), rtol=0, atol=2e-2)
    # non-target logits are s·cos of the (bf16-rounded) cosines, ≈ s·cos of the exact angle
    hand = torch.tensor(hand_logits(m, row), dtype=torch.float64)
    nt = [j for j in range(4) if j != row]
    torch.testing.assert_close(logits[:, nt].double()/S, hand[:, nt]/S, rtol=0, atol=2e-2)
    # the margin itself is computed in float32 even under autocast: exact at the head's own cosines
    own = torch.tensor([ref_psi(math.acos(max(-1., min(1., c))), m[0], m[1]) - m[2] for c in cos[:, row].double().tolist()],
                       dtype=torch.float64)
    torch.testing.assert_close(logits[:, row].double()/S, own, rtol=0, atol=1e-4)
    # ...and ≈ the exact-angle value where acos is well conditioned and away from the ArcFace jump at θ = π − m2
    keep = [i for i,a in enumerate(ANGLES) if 30 <= a <= 150 and not (m[0] == 1 and abs(math.radians(a) - (PI - m[1])) < 0.06)]
    torch.testing.assert_close(logits[keep, row].double()/S, hand[keep, row]/S, rtol=0, atol=2e-2)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)

def test_hand_cases_include_theta_beyond_pi_minus_m2():
    "The angle grid really exercises the θ > π − m2 branch for the ArcFace margins"
    for m1,m2,_ in MARGINS:
        if m1 == 1 and m2 > 0: assert sum(math.radians(a) > PI - m2 for a in ANGLES) >= 20

# ----------------------------------------------------------------------------------------------------
# 2. Special cases against independent formulas
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ['mean', 'sum', 'none'])
def test_no_margin_is_normalised_softmax(reduction):
    cos, y = some_cos(8, 5), torch.randint(0, 5, (8,))
    got = CombinedMarginLoss(s=12., m1=1., m2=0., m3=0., reduction=reduction)(cos, y)
    torch.testing.assert_close(got, F.cross_entropy(12.*cos, y, reduction=reduction), rtol=1e-12, atol=1e-12)

@pytest.mark.parametrize("m", [0.2, 0.5, 1.0])
def test_arcface_matches_insightface_formula(m):
    "cos(θ+m) = cos θ cos m − sin θ sin m on the target while θ < π − m, InsightFace's c − m·sin m beyond"
    n, c, s = 40, 4, 20.
    y = torch.arange(n) % c
    cos = some_cos(n, c)
    th = torch.linspace(0.01, PI - 0.01, n, dtype=torch.float64)
    cos[torch.arange(n), y] = torch.cos(th)
    ct = cos[torch.arange(n), y]
    sin = torch.sqrt(1 - ct**2)
    phi = torch.where(th < PI - m, ct*math.cos(m) - sin*math.sin(m), ct - m*math.sin(m))
    logits = s*cos.clone()
    logits[torch.arange(n), y] = s*phi
    got = CombinedMarginLoss(s, 1., m, 0., reduction='none')(cos, y)
    # for m <= ~1.17 the InsightFace fallback m·sin m is the larger constant, as in the library formula
    assert m*math.sin(m) >= 1 - math.cos(m)
    torch.testing.assert_close(got, F.cross_entropy(logits, y, reduction='none'), rtol=1e-10, atol=1e-10)
    # and the acos form on the target where θ < π − m
    inside = th < PI - m
    torch.testing.assert_close(margin_logits(cos, y, s, 1., m, 0.)[torch.arange(n), y][inside],
                               s*torch.cos(torch.acos(ct) + m)[inside], rtol=1e-10, atol=1e-10)

@pytest.mark.parametrize("m", [0.1, 0.35, 0.6])
def test_cosface_is_ce_of_shifted_cosines(m):
    cos, y = some_cos(10, 6), torch.randint(0, 6, (10,))
    ref = F.cross_entropy(25.*(cos - m*F.one_hot(y, 6).double()), y)
    torch.testing.assert_close(CombinedMarginLoss(25., 1., 0., m)(cos, y), ref, rtol=1e-12, atol=1e-12)

@pytest.mark.parametrize("m", [1.35, 2., 4.])
def test_sphereface_is_cos_m_theta_below_pi_over_m(m):
    n, c, s = 12, 3, 16.
    y = torch.arange(n) % c
    cos = some_cos(n, c)
    th = torch.linspace(0.02, PI/m - 0.02, n, dtype=torch.float64)
    cos[torch.arange(n), y] = torch.cos(th)
    logits = s*cos.clone()
    logits[torch.arange(n), y] = s*torch.cos(m*th)
    torch.testing.assert_close(CombinedMarginLoss(s, m, 0., 0.)(cos, y), F.cross_entropy(logits, y), rtol=1e-10, atol=1e-10)

@pytest.mark.parametrize("preset,m,margins", [
    (ArcFaceLoss, 0.5, (1., 0.5, 0.)), (ArcFaceLoss, 0.3, (1., 0.3, 0.)),
    (CosFaceLoss, 0.35, (1., 0., 0.35)), (CosFaceLoss, 0.2, (1., 0., 0.2)),
    (SphereFaceLoss, 1.35, (1.35, 0., 0.)), (SphereFaceLoss, 4., (4., 0., 0.))])
@pytest.mark.parametrize("kw", [{}, dict(s=9., reduction='none', easy_margin=True)])
def test_presets_equal_combined(preset, m, margins, kw):
    cos, y = some_cos(9, 4), torch.randint(0, 4, (9,))
    p, ref = preset(m=m, **kw), CombinedMarginLoss(*((kw.get('s', 30.),) + margins),
                                                   **{k:v for k,v in kw.items() if k != 's'})
    assert isinstance(p, CombinedMarginLoss)
    assert (p.s, p.m1, p.m2, p.m3, p.reduction, p.easy_margin) == (ref.s, ref.m1, ref.m2, ref.m3, ref.reduction, ref.easy_margin)
    torch.testing.assert_close(p(cos, y), ref(cos, y), rtol=0, atol=0)

def test_preset_defaults():
    assert (ArcFaceLoss().m1, ArcFaceLoss().m2, ArcFaceLoss().m3) == (1., 0.5, 0.)
    assert (CosFaceLoss().m1, CosFaceLoss().m2, CosFaceLoss().m3) == (1., 0., 0.35)
    assert (SphereFaceLoss().m1, SphereFaceLoss().m2, SphereFaceLoss().m3) == (1.35, 0., 0.)

# ----------------------------------------------------------------------------------------------------
# 3. Gradients
# ----------------------------------------------------------------------------------------------------
GRAD_MARGINS = MARGINS + [(1., 0., 0.), (0.5, 0.2, 0.), (3., 1., -0.2)]

def kinks(m1, m2, easy=False):
    "Angles where ψ is not differentiable, plus θ = 0 and π (cos = ±1)"
    ks = [0., PI]
    if m1 == 1 and m2 > 0: ks.append(PI - m2)
    if m1 != 1: ks += [(k*PI - m2)/m1 for k in range(0, 20) if 0 <= (k*PI - m2)/m1 <= PI]
    if easy: ks.append(PI/2)
    return ks

def smooth_thetas(m1, m2, easy=False, gap=0.05):
    cands = [0.1 + i*(PI - 0.2)/24 for i in range(25)]
    th = [t for t in cands if min(abs(t - k) for k in kinks(m1, m2, easy)) > gap]
    assert len(th) >= 8
    return th[::max(1, len(th)//8)][:8]

@pytest.mark.parametrize("easy", [False, True])
@pytest.mark.parametrize("m", GRAD_MARGINS, ids=[f"m1={a}-m2={b}-m3={c}" for a,b,c in GRAD_MARGINS])
def test_gradcheck_loss_wrt_cos(m, easy):
    th = smooth_thetas(m[0], m[1], easy)
    n, c = len(th), 4
    y = torch.arange(n) % c
    cos = some_cos(n, c, lo=-0.9, hi=0.9)
    cos[torch.arange(n), y] = torch.cos(torch.tensor(th, dtype=torch.float64))
    cos.requires_grad_(True)
    for red in ('mean', 'none'):
        f = CombinedMarginLoss(6., *m, easy_margin=easy, reduction=red)
        assert torch.autograd.gradcheck(lambda c_: f(c_, y), (cos,), eps=1e-6, atol=1e-6, rtol=1e-4)

def test_gradcheck_target_logit():
    for m in [(1., 0.5, 0.), (1.35, 0., 0.), (2.5, 0.3, 0.1)]:
        th = torch.tensor(smooth_thetas(m[0], m[1]), dtype=torch.float64)
        c = torch.cos(th).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda c_: target_logit(c_, *m), (c,), eps=1e-6, atol=1e-6, rtol=1e-4)

ENDPOINT_MARGINS = [(dict(m1=1., m2=0.5, m3=0.)), dict(m1=1.35, m2=0., m3=0.), dict(m1=4., m2=0., m3=0.),
                    dict(m1=1., m2=0., m3=0.35), dict(m1=2.5, m2=0.3, m3=0.1), dict(m1=1., m2=0.5, m3=0., easy_margin=True),
                    dict(m1=1.35, m2=0.2, m3=0., easy_margin=True), dict(m1=1., m2=0.5, m3=0., detach_margin=True)]

@pytest.mark.parametrize("kw", ENDPOINT_MARGINS, ids=[str(k) for k in ENDPOINT_MARGINS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grad_finite_at_cos_plus_minus_one(kw, dtype):
    cos = torch.tensor([[1., 0.3, -0.2], [-1., 0.5, 0.1], [0.2, 1., -1.], [0.3, -1., -1.], [1., 1., -1.]], dtype=dtype, requires_grad=True)
    y = torch.tensor([0, 0, 1, 2, 1])
    loss = CombinedMarginLoss(s=30., **kw)(cos, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(cos.grad).all()
    # the values at the endpoints are the reference's ψ(0) and ψ(π)
    m1, m2, m3 = kw['m1'], kw['m2'], kw['m3']
    lg = margin_logits(cos.detach(), y, 30., m1, m2, m3, kw.get('easy_margin', False))
    psi0, psipi = ref_psi(0., m1, m2) - m3, (-1. if kw.get('easy_margin') else ref_psi(PI, m1, m2)) - m3
    assert lg[0, 0].item() == pytest.approx(30*psi0, abs=1e-4) and lg[1, 0].item() == pytest.approx(30*psipi, abs=1e-4)

@pytest.mark.parametrize("kw", ENDPOINT_MARGINS[:7], ids=[str(k) for k in ENDPOINT_MARGINS[:7]])
def test_grad_finite_through_head_at_cos_plus_minus_one(kw):
    head = ArcFaceHead(2, 3)
    with torch.no_grad(): head.weight.copy_(torch.tensor([[1., 0.], [0., 1.], [-1., 0.]]))
    x = torch.tensor([[2., 0.], [-3., 0.], [0., 0.5], [0., -4.]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])                       # cosines +1, −1, +1, −1 on the targets
    cos = head(x)
    torch.testing.assert_close(cos[torch.arange(4), y], torch.tensor([1., -1., 1., -1.]))
    loss = CombinedMarginLoss(s=30., **kw)(cos, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()

# ----------------------------------------------------------------------------------------------------
# 4. Monotonicity of the target logit, and easy_margin
# ----------------------------------------------------------------------------------------------------
THETA = torch.linspace(0, PI, 20001, dtype=torch.float64)
COS_GRID = torch.cos(THETA)

@pytest.mark.parametrize("m1", [0.5, 1., 1.35, 2., 3., 4.])
def test_target_logit_non_increasing(m1):
    sub = list(range(0, 20001, 250))
    for m2 in [0., 0.1, 0.5, 1., 2., 2.5, 3.1]:
        for m3 in [-0.2, 0., 0.35]:
            t = target_logit(COS_GRID, m1, m2, m3)
            assert t.dtype == torch.float64 and torch.isfinite(t).all()
            d = t[1:] - t[:-1]
            assert d.max().item() <= 1e-12, (m1, m2, m3, THETA[1:][d.argmax()].item())
            # and it is the reference on a subsample (away from the ArcFace jump)
            for i in sub:
                th = THETA[i].item()
                if m1 == 1 and abs(th - (PI - m2)) < 1e-9: continue
                assert t[i].item() == pytest.approx(ref_psi(th, m1, m2) - m3, abs=1e-9), (m1, m2, m3, th)

@pytest.mark.parametrize("m", [(1., 0.5, 0.), (1., 0.4, 0.2), (1.35, 0., 0.), (2.5, 0.3, 0.1), (1., 0., 0.35)])
def test_easy_margin(m):
    easy = target_logit(COS_GRID, *m, easy_margin=True)
    plain = target_logit(COS_GRID, *m)
    neg = COS_GRID <= 0
    assert neg.any() and (~neg).any()
    torch.testing.assert_close(easy[neg], COS_GRID[neg] - m[2], rtol=0, atol=0)
    torch.testing.assert_close(easy[~neg], plain[~neg], rtol=0, atol=0)
    # through margin_logits/the loss too
    cos = torch.tensor([[0.6, 0.1], [-0.3, 0.2], [0., 0.5]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0])
    lg = margin_logits(cos, y, 10., *m, easy_margin=True)
    exp = [10*(ref_psi(math.acos(0.6), m[0], m[1]) - m[2]), 10*(-0.3 - m[2]), 10*(0. - m[2])]
    torch.testing.assert_close(lg[:, 0], torch.tensor(exp, dtype=torch.float64), rtol=0, atol=1e-12)

def test_easy_margin_is_not_monotone_at_half_pi():
    "Documented behaviour: with easy_margin ArcFace jumps back up to cos θ ≈ 0 when crossing θ = π/2"
    easy = target_logit(COS_GRID, 1., 0.5, 0., easy_margin=True)
    assert (easy[1:] - easy[:-1]).max().item() > 0.4

# ----------------------------------------------------------------------------------------------------
# 5. detach_margin
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [(1., 0.5, 0.), (1.35, 0., 0.), (2.5, 0.3, 0.1), (1., 0.4, 0.2)])
def test_detach_margin(m):
    n, c, s = 7, 4, 10.
    y = torch.arange(n) % c
    base = some_cos(n, c, lo=-0.8, hi=0.8)
    cd, cp = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    ld = CombinedMarginLoss(s, *m, detach_margin=True)(cd, y)
    lp = CombinedMarginLoss(s, *m)(cp, y)
    # equal up to the rounding of cos_y + (ψ − cos_y)
    assert ld.item() == pytest.approx(lp.item(), rel=1e-14)
    torch.testing.assert_close(margin_logits(base, y, s, *m, detach_margin=True), margin_logits(base, y, s, *m), rtol=1e-14, atol=1e-14)
    ld.backward(); lp.backward()
    # hand gradient: s·(softmax(margined logits) − onehot)/N
    ml = margin_logits(base, y, s, *m)
    hand = s*(torch.softmax(ml, -1) - F.one_hot(y, c).double())/n
    torch.testing.assert_close(cd.grad, hand, rtol=1e-10, atol=1e-12)
    rows = torch.arange(n)
    tmask = F.one_hot(y, c).bool()
    # without detaching, the non-target columns agree but the target column carries dψ/dcos
    torch.testing.assert_close(cp.grad[~tmask], cd.grad[~tmask], rtol=1e-10, atol=1e-12)
    assert (cp.grad[rows, y] - cd.grad[rows, y]).abs().max().item() > 1e-3

def test_detach_margin_cosface_gradient_unchanged():
    "For CosFace dψ/dcos = 1, so detaching the margin changes nothing"
    base, y = some_cos(5, 3), torch.tensor([0, 1, 2, 0, 1])
    cd, cp = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    CombinedMarginLoss(10., 1., 0., 0.35, detach_margin=True)(cd, y).backward()
    CombinedMarginLoss(10., 1., 0., 0.35)(cp, y).backward()
    torch.testing.assert_close(cd.grad, cp.grad, rtol=1e-12, atol=1e-14)

# ----------------------------------------------------------------------------------------------------
# 6. Margin only on targets; inputs untouched
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [(1., 0.5, 0.), (4., 0., 0.), (2.5, 0.3, 0.1)])
def test_non_target_logits_are_s_cos_and_input_untouched(m, dtype):
    cos = some_cos(6, 5, dtype=torch.float32).to(dtype)
    y = torch.tensor([4, 0, 3, 3, 1, 2])
    keep = cos.clone()
    lg = margin_logits(cos, y, 30., *m)
    assert torch.equal(cos, keep)
    nt = ~F.one_hot(y, 5).bool()
    ref = cos.float() if dtype in (torch.float16, torch.bfloat16) else cos
    assert torch.equal(lg[nt], (ref*30.)[nt])
    assert lg.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # the target logit does differ from s·cos
    assert ((lg[~nt] - (ref*30.)[~nt]).abs() > 1e-3).all()
    # the loss does not touch its input either
    CombinedMarginLoss(30., *m)(cos, y)
    assert torch.equal(cos, keep)

# ----------------------------------------------------------------------------------------------------
# 7. fastai contract
# ----------------------------------------------------------------------------------------------------
def test_activation_decodes_y_int():
    f = CombinedMarginLoss(s=7., m2=0.5)
    cos = some_cos(5, 4, dtype=torch.float32)
    torch.testing.assert_close(f.activation(cos), torch.softmax(7.*cos, dim=-1))
    assert torch.equal(f.decodes(cos), cos.argmax(dim=-1))
    assert CombinedMarginLoss.y_int is True and f.y_int is True and ArcFaceLoss().y_int is True
    # bf16 cosines give float32 probabilities summing to 1
    p = f.activation(cos.bfloat16())
    assert p.dtype == torch.float32
    torch.testing.assert_close(p.sum(-1), torch.ones(5))

@pytest.mark.parametrize("m", [(1., 0.5, 0.), (1.35, 0.2, 0.1)])
def test_reductions(m):
    cos, y = some_cos(8, 3), torch.randint(0, 3, (8,))
    none = CombinedMarginLoss(20., *m, reduction='none')(cos, y)
    assert none.shape == (8,)
    ref = torch.tensor([ref_ce([r], [t]) for r,t in zip(margin_logits(cos, y, 20., *m).tolist(), y.tolist())], dtype=torch.float64)
    torch.testing.assert_close(none, ref, rtol=1e-10, atol=1e-10)
    f = CombinedMarginLoss(20., *m)
    torch.testing.assert_close(f(cos, y), none.mean(), rtol=1e-12, atol=1e-12)
    f.reduction = 'sum'
    torch.testing.assert_close(f(cos, y), none.sum(), rtol=1e-12, atol=1e-12)
    f.reduction = 'none'
    torch.testing.assert_close(f(cos, y), none, rtol=0, atol=0)

def test_invalid_reduction():
    f = CombinedMarginLoss()
    with pytest.raises(ValueError, match='reduction'): f.reduction = 'avg'
    assert f.reduction == 'mean'
    with pytest.raises(ValueError, match='reduction'): CombinedMarginLoss(reduction='batchmean')
    with pytest.raises(ValueError, match='reduction'): ArcFaceLoss(reduction=None)

def test_to_returns_module():
    f = CombinedMarginLoss()
    assert f.to('cpu') is f
    assert f.to(torch.float64) is f

@pytest.mark.parametrize("f", [CombinedMarginLoss(12., 1.35, 0.3, 0.1, easy_margin=True, reduction='sum'),
                               ArcFaceLoss(m=0.4, s=9., detach_margin=True), CosFaceLoss(), SphereFaceLoss(m=2.)],
                         ids=['combined', 'arcface', 'cosface', 'sphereface'])
def test_pickle_round_trip(f):
    b = pickle.dumps(f)
    assert b'cosine_losses.losses' in b and type(f).__name__.encode() in b
    g = pickle.loads(b)
    assert type(g) is type(f)
    for a in ('s', 'm1', 'm2', 'm3', 'easy_margin', 'detach_margin', 'reduction'):
        assert getattr(g, a) == getattr(f, a), a
    cos, y = some_cos(6, 4), torch.randint(0, 4, (6,))
    torch.testing.assert_close(g(cos, y), f(cos, y), rtol=0, atol=0)
    with pytest.raises(ValueError, match='reduction'): g.reduction = 'bad'

def test_fastai_learner():
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.torch_core import set_seed
    from fastai.metrics import accuracy
    set_seed(42)
    def blobs(n):
        y = torch.arange(n) % 3
        ang = y.float()*2*PI/3
        x = torch.stack([torch.cos(ang), torch.sin(ang)], 1)*2 + 0.5*torch.randn(n, 2)
        return list(zip(x, y))
    train, valid = blobs(300), blobs(120)
    dls = DataLoaders.from_dsets(train, valid, bs=32, device='cpu')
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 4), ArcFaceHead(4, 3))
    loss = ArcFaceLoss(m=0.2, s=16.)
    learn = Learner(dls, model, loss_func=loss, metrics=accuracy)
    with learn.no_logging(): learn.fit(3, lr=1e-2)
    preds, targs, losses = learn.get_preds(with_loss=True)
    assert preds.shape == (120, 3) and losses.shape == (120,)
    torch.testing.assert_close(preds.sum(-1), torch.ones(120))
    assert loss.reduction == 'mean'                      # restored after get_preds
    # preds are the loss's activation of the raw cosines; losses its per-item loss
    raw, _ = learn.get_preds(act=lambda o: o)
    torch.testing.assert_close(preds, loss.activation(raw))
    torch.testing.assert_close(losses, ArcFaceLoss(m=0.2, s=16., reduction='none')(raw, targs), rtol=1e-5, atol=1e-5)
    acc = (preds.argmax(-1) == targs).float().mean().item()
    assert acc > 0.6, acc                                 # chance is 1/3

# ----------------------------------------------------------------------------------------------------
# 8. Bad inputs: ValueError/TypeError naming the parameter, never a NaN loss
# ----------------------------------------------------------------------------------------------------
BAD_MARGINS = [
    (dict(s=0.), ValueError, '`s`'), (dict(s=-1.), ValueError, '`s`'),
    (dict(s=float('nan')), ValueError, '`s`'), (dict(s=float('inf')), ValueError, '`s`'),
    (dict(m1=0.), ValueError, '`m1`'), (dict(m1=-1.35), ValueError, '`m1`'), (dict(m1=float('nan')), ValueError, '`m1`'),
    (dict(m2=-0.1), ValueError, '`m2`'), (dict(m2=PI), ValueError, '`m2`'), (dict(m2=4.), ValueError, '`m2`'),
    (dict(m2=float('nan')), ValueError, '`m2`'), (dict(m2=float('inf')), ValueError, '`m2`'),
    (dict(m3=float('nan')), ValueError, '`m3`'), (dict(m3=float('-inf')), ValueError, '`m3`'),
    (dict(s='30'), TypeError, '`s`'), (dict(m1=True), TypeError, '`m1`'), (dict(m2='0.5'), TypeError, '`m2`'),
    (dict(m2=torch.tensor(0.5)), TypeError, '`m2`'), (dict(m3=False), TypeError, '`m3`'),
    (dict(m3=torch.tensor(0.35)), TypeError, '`m3`'), (dict(s=None), TypeError, '`s`'), (dict(m1=1+0j), TypeError, '`m1`'),
]
BAD_IDS = [f"{k}={v!r}" for d,_,_ in BAD_MARGINS for k,v in d.items()]

@pytest.mark.parametrize("kw,exc,match", BAD_MARGINS, ids=BAD_IDS)
def test_bad_margins(kw, exc, match):
    full = dict(s=30., m1=1., m2=0.5, m3=0.) | kw
    cos, y = some_cos(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(exc, match=match): check_margins(**full)
    with pytest.raises(exc, match=match): CombinedMarginLoss(**full)
    with pytest.raises(exc, match=match): margin_logits(cos, y, **full)
    if 's' not in kw:
        with pytest.raises(exc, match=match): target_logit(cos[:, 0], full['m1'], full['m2'], full['m3'])

def test_good_margins_accepted():
    "Edge values that are valid: no error, finite loss"
    cos, y = some_cos(3, 4), torch.tensor([0, 1, 2])
    for kw in [dict(s=1e-3), dict(m1=0.01), dict(m2=0.), dict(m2=3.14), dict(m3=-0.5), dict(m3=2.)]:
        check_margins(**kw)
        assert torch.isfinite(CombinedMarginLoss(**kw)(cos, y))

def test_preset_bad_margin():
    with pytest.raises(ValueError, match='`m2`'): ArcFaceLoss(m=-0.5)
    with pytest.raises(ValueError, match='`m1`'): SphereFaceLoss(m=0.)
    with pytest.raises(ValueError, match='`m3`'): CosFaceLoss(m=float('nan'))
    with pytest.raises(ValueError, match='`s`'): CosFaceLoss(s=0.)

C4 = some_cos(3, 4)
BAD_INPUTS = [
    ('label_negative', C4, torch.tensor([0, -1, 2]), ValueError, 'targ'),
    ('label_eq_C', C4, torch.tensor([0, 4, 2]), ValueError, 'targ'),
    ('label_float', C4, torch.tensor([0., 1., 2.]), TypeError, 'targ'),
    ('label_bool', C4, torch.tensor([True, False, True]), TypeError, 'targ'),
    ('label_list', C4, [0, 1, 2], TypeError, 'targ'),
    ('label_2d', C4, torch.tensor([[0], [1], [2]]), ValueError, 'targ'),
    ('label_len', C4, torch.tensor([0, 1]), ValueError, 'targ'),
    ('cos_1d', C4[0], torch.tensor([0, 1, 2, 3]), ValueError, 'cos'),
    ('cos_3d', C4[None], torch.tensor([0, 1, 2]), ValueError, 'cos'),
    ('cos_int', torch.zeros(3, 4, dtype=torch.long), torch.tensor([0, 1, 2]), TypeError, 'cos'),
    ('cos_list', C4.tolist(), torch.tensor([0, 1, 2]), TypeError, 'cos'),
    ('cos_numpy', C4.numpy(), torch.tensor([0, 1, 2]), TypeError, 'cos'),
]

@pytest.mark.parametrize("name,cos,y,exc,match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(name, cos, y, exc, match):
    with pytest.raises(exc, match=match): margin_logits(cos, y)
    with pytest.raises(exc, match=match): CombinedMarginLoss()(cos, y)

@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8], ids=["int32", "int16", "uint8"])
def test_other_integer_label_dtypes(dtype):
    "Integer labels that pass validation must work like int64 (or be refused with an error naming `targ`)"
    cos, y = some_cos(4, 3), torch.tensor([0, 1, 2, 1])
    ref = ArcFaceLoss()(cos, y)
    try: got = ArcFaceLoss()(cos, y.to(dtype))
    except (TypeError, ValueError) as e:
        assert 'targ' in str(e)
        return
    torch.testing.assert_close(got, ref, rtol=0, atol=0)

def test_uint8_labels_not_treated_as_mask():
    "uint8 labels [1, 1, 1] with N == C must put the margin on column 1, not on the diagonal (boolean-mask indexing)"
    cos = torch.tensor([[0.5, 0.1, -0.2], [0.3, 0.6, 0.0], [0.2, 0.4, 0.7]])
    y = torch.tensor([1, 1, 1])
    ref = ArcFaceLoss(s=10.)(cos, y)
    try: got = ArcFaceLoss(s=10.)(cos, y.to(torch.uint8))
    except (TypeError, ValueError) as e:
        assert 'targ' in str(e)
        return
    torch.testing.assert_close(got, ref, rtol=0, atol=0)

NONFINITE = [(v, col) for v in (float('nan'), float('inf'), float('-inf')) for col in ('target', 'other')]

@pytest.mark.parametrize("m", [(1., 0., 0.), (1., 0.5, 0.), (1.35, 0., 0.), (1., 0., 0.35)], ids=['softmax', 'arcface', 'sphereface', 'cosface'])
@pytest.mark.parametrize("v,col", NONFINITE, ids=[f"{v}-{c}" for v,c in NONFINITE])
@pytest.mark.parametrize("reduction", ['mean', 'none'])
def test_non_finite_cos_raises(v, col, m, reduction):
    cos, y = some_cos(3, 4, dtype=torch.float32), torch.tensor([0, 1, 2])
    cos[1, 1 if col == 'target' else 3] = v
    "A non-finite cosine anywhere is refused, whether or not it happens to make the loss non-finite"
    with pytest.raises(ValueError, match='cos'): CombinedMarginLoss(30., *m, reduction=reduction)(cos, y)

def test_empty_batch():
    "A batch of size 0 is valid input: 'none' gives shape (0,), 'sum' gives 0"
    cos, y = torch.empty(0, 4), torch.empty(0, dtype=torch.long)
    assert CombinedMarginLoss(reduction='none')(cos, y).shape == (0,)
    assert CombinedMarginLoss(reduction='sum')(cos, y).item() == 0.

# ----------------------------------------------------------------------------------------------------
# Per-class margins: m2 and m3 as tensors of C values
# ----------------------------------------------------------------------------------------------------
PER_CLASS = [dict(m1=1., m2=[0.5, 0.05, 2.5, 0.], m3=0.), dict(m1=1., m2=0., m3=[0.35, 0.1, -0.2, 0.]),
             dict(m1=1., m2=[0.3, 0.5, 0.4, 0.2], m3=[0.1, 0.2, 0., 0.3]), dict(m1=1.35, m2=[0.1, 0.3, 0., 0.2], m3=0.)]
PER_IDS = ['arc', 'cos', 'combined', 'sphere+arc']

def per_class(kw):
    return {k: torch.tensor(v, dtype=torch.float64) if isinstance(v, list) else v for k,v in kw.items()}

def hand_per_class(cos, y, s, kw):
    "Scalar logits with each sample's margins taken from its class"
    out = []
    for row,c in zip(cos.tolist(), y.tolist()):
        m2 = kw['m2'][c] if isinstance(kw['m2'], list) else kw['m2']
        m3 = kw['m3'][c] if isinstance(kw['m3'], list) else kw['m3']
        out.append([s*(ref_psi(math.acos(v), kw['m1'], m2) - m3) if j == c else s*v for j,v in enumerate(row)])
    return out

@pytest.mark.parametrize("kw", PER_CLASS, ids=PER_IDS)
def test_per_class_margins_match_scalar_reference(kw):
    "Every class's margin, fallback included (class 2's m2 = 2.5 is past its switch), against the scalar reference"
    cos = exact_cos(0)
    y = torch.arange(len(ANGLES)) % 4
    cos[torch.arange(len(y)), y] = torch.cos(torch.deg2rad(torch.tensor(ANGLES, dtype=torch.float64)))
    hand = hand_per_class(cos, y, S, kw)
    torch.testing.assert_close(margin_logits(cos, y, S, **per_class(kw))/S, torch.tensor(hand, dtype=torch.float64)/S, rtol=0, atol=1e-9)
    assert CombinedMarginLoss(S, **per_class(kw))(cos, y).item() == pytest.approx(ref_ce(hand, y.tolist()), rel=1e-9)

@pytest.mark.parametrize("kw", PER_CLASS, ids=PER_IDS)
def test_per_class_equals_scalar_loss_per_sample(kw):
    "Sample i under per-class margins is the scalar loss with its class's margins: values and gradients"
    cos, y = some_cos(12, 4), torch.arange(12) % 4
    c1 = cos.clone().requires_grad_()
    l1 = CombinedMarginLoss(20., **per_class(kw), reduction='none')(c1, y)
    (l1*torch.arange(1, 13)).sum().backward()
    for i,c in enumerate(y.tolist()):
        sc = {k: (v[c] if isinstance(v, list) else v) for k,v in kw.items()}
        ci = cos[i:i+1].clone().requires_grad_()
        li = CombinedMarginLoss(20., **sc)(ci, y[i:i+1])
        (li*(i + 1)).backward()
        assert l1[i].item() == pytest.approx(li.item(), rel=1e-12)
        torch.testing.assert_close(c1.grad[i], ci.grad[0], rtol=1e-10, atol=1e-12)

def test_per_class_gradcheck_and_monotone():
    m2 = torch.tensor([0.5, 1.2, 0.05, 3.])
    y = torch.arange(8) % 4
    cos = torch.cos(torch.tensor([.3, .7, 1.1, 1.5, 2.0, 2.2, 2.6, 2.9], dtype=torch.float64))[:,None].repeat(1, 4)*0.9
    cos[torch.arange(8), y] = torch.cos(torch.tensor([.3, .7, 1.1, .1, 2.0, 1.8, 2.6, .05], dtype=torch.float64))
    cos.requires_grad_()
    assert torch.autograd.gradcheck(lambda c_: CombinedMarginLoss(6., m2=m2)(c_, y), (cos,), eps=1e-6, atol=1e-6, rtol=1e-4)
    for j in range(4):  # each class's target logit is non-increasing in θ, and is the scalar margin's
        t = target_logit(COS_GRID, 1., m2[j].double().expand(len(COS_GRID)).contiguous())
        assert t.diff().max().item() <= 1e-12
        torch.testing.assert_close(t, target_logit(COS_GRID, 1., m2[j].item()), rtol=0, atol=1e-12)

def test_per_class_zero_margin_keeps_unit_slope_at_cos_one():
    "A class with m2 = 0 is the plain cosine, gradient 1 even at cos θ = 1 where acos has no slope"
    c = torch.tensor([1., 0.5], dtype=torch.float64, requires_grad=True)
    target_logit(c, 1., torch.tensor([0., 0.], dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(c.grad, torch.ones(2, dtype=torch.float64))

def test_per_class_pickle_reduction_and_repr():
    f = CombinedMarginLoss(s=10., m2=torch.tensor([.1, .5, .3]), reduction='none')
    g = pickle.loads(pickle.dumps(f))
    cos, y = some_cos(6, 3).float(), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(g(cos, y), f(cos, y), rtol=0, atol=0)
    assert 'tensor of 3 in [0.1, 0.5]' in repr(f)
    f.reduction = 'sum'
    assert f(cos, y).item() == pytest.approx(g(cos, y).sum().item(), rel=1e-6)

def test_per_class_margins_follow_device_and_dtype_once():
    "Margins given in float32 are used in float64 for float64 cosines, converted once and kept"
    m2 = torch.tensor([.1, .5, .3])
    f = CombinedMarginLoss(s=10., m2=m2)
    f(some_cos(4, 3), torch.tensor([0, 1, 2, 0]))
    assert f.m2.dtype == torch.float64 and m2.dtype == torch.float32  # the caller's tensor is untouched (a copy is kept)
    m2[0] = 3.  # and later changes to it do not leak into the loss
    assert f.m2[0].item() == pytest.approx(.1)

@pytest.mark.parametrize("m,exc,match", [
    (dict(m2=torch.tensor([.5, 4.])), ValueError, r'\[0, π\)'), (dict(m2=torch.tensor([.5, -.1])), ValueError, r'\[0, π\)'),
    (dict(m2=torch.tensor([.5, float('nan')])), ValueError, 'finite'), (dict(m3=torch.tensor([.5, float('inf')])), ValueError, 'finite'),
    (dict(m2=torch.tensor([[.5, .2]])), TypeError, '1-d'), (dict(m3=torch.tensor([1, 2])), TypeError, '1-d'),
    (dict(m2=torch.tensor(.5)), TypeError, 'm2'), (dict(m2=[.5, .2]), TypeError, 'm2'),
])
def test_per_class_bad_margins(m, exc, match):
    cos, y = some_cos(3, 2), torch.tensor([0, 1, 0])
    with pytest.raises(exc, match=match): check_margins(**m)
    with pytest.raises(exc, match=match): CombinedMarginLoss(**m)
    with pytest.raises(exc, match=match): margin_logits(cos, y, **m)
    f = CombinedMarginLoss()
    with pytest.raises(exc, match=match): setattr(f, *next(iter(m.items())))  # also when set later

def test_per_class_wrong_number_of_classes():
    f = CombinedMarginLoss(m2=torch.tensor([.1, .2, .3]))
    with pytest.raises(ValueError, match='3 per-class margins but `cos` has 4'): f(some_cos(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match='m3'): margin_logits(some_cos(2, 4), torch.tensor([0, 3]), m3=torch.zeros(5))

def test_margins_checked_when_set_not_per_step():
    "MarginScheduler sets floats every batch: each is checked on assignment"
    f = CombinedMarginLoss()
    with pytest.raises(ValueError, match='`m2`'): f.m2 = 4.
    with pytest.raises(ValueError, match='`s`'): f.s = 0.
    f.m2 = .3
    assert f.m2 == .3
