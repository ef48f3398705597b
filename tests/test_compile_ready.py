"""`ArcFaceHead` + `CombinedMarginLoss` are compile-ready: `torch.compile(fullgraph=True)` traces head + loss, forward
and backward, with no graph break for every margin option, and the compiled values and gradients equal eager ones.

A graph break is an error under `fullgraph=True`, and anything that reads a value back from the device (`.item()`,
`if tensor.any()`) is one: so these tests are also the CPU-side proof that a step never waits on the device.
`aot_eager` traces the whole step (dynamo, then AOTAutograd's joint forward + backward graph) without code
generation, so every option is cheap to check; `inductor` (C++ on this machine) compiles a few of them for real."""
import math
import pytest, torch

from cosine_losses.heads import ArcFaceHead
from cosine_losses.losses import CombinedMarginLoss

OPTIONS = {'arcface': dict(m2=.5), 'cosface': dict(m2=0., m3=.35), 'sphereface': dict(m1=1.35, m2=0.),
           'm1_2.5_combined': dict(m1=2.5, m2=.3, m3=.1), 'combined': dict(m2=.4, m3=.2), 'softmax': dict(m2=0.),
           'easy_margin': dict(m2=.5, easy_margin=True), 'easy_m1': dict(m1=1.35, m2=0., easy_margin=True),
           'detach_margin': dict(m2=.5, detach_margin=True), 'detach_m1': dict(m1=4., m2=0., detach_margin=True),
           'sum': dict(m2=.5, reduction='sum'), 'none': dict(m2=.5, reduction='none')}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    "Each test compiles from scratch: no cache entry or recompile limit carried over"
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def batch(n=24, d=16, c=12, k=1, dtype=torch.float32):
    "A head and a batch with features and centres of assorted norms, some targets far from their centre"
    head = ArcFaceHead(d, c, k=k).to(dtype)
    with torch.no_grad(): head.weight.mul_(torch.rand(c*k, 1, dtype=dtype).add(.1)*3)
    x = torch.randn(n, d, dtype=dtype)*torch.rand(n, 1, dtype=dtype).add(.1)*5
    return head, x, torch.randint(0, c, (n,))


def step(head, loss, x, y, fn=None):
    "Loss and gradients (features, centres) of one step, through `fn` (a compiled `loss(head(x), y)`) or eagerly"
    head.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    l = (fn or (lambda x, y: loss(head(x), y)))(x, y)
    (l*(torch.linspace(.5, 1.5, l.numel()) if l.ndim else 1.)).sum().backward()  # any upstream gradient, for reduction='none'
    return l.detach(), x.grad, head.weight.grad


def check(head, loss, x, y, backend, rtol=1e-5, atol=1e-6):
    eager = step(head, loss, x, y)
    fn = torch.compile(lambda x, y: loss(head(x), y), fullgraph=True, backend=backend, dynamic=False)
    for _ in range(2):  # the second call runs the cached graph
        for a,b in zip(step(head, loss, x, y, fn), eager): torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize('name', OPTIONS)
def test_fullgraph_every_option(name):
    "Every margin option traces into one graph, forward and backward, and computes what eager mode does"
    head, x, y = batch()
    check(head, CombinedMarginLoss(**OPTIONS[name]), x, y, 'aot_eager')


def test_fullgraph_subcentres():
    head, x, y = batch(k=3)
    check(head, CombinedMarginLoss(m2=.5), x, y, 'aot_eager')


def test_fullgraph_bf16_autocast():
    "Under autocast the products run in bf16 inside the graph; the result is the eager one"
    head, x, y = batch()
    loss = CombinedMarginLoss(m2=.5)
    eager = step(head, loss, x, y, lambda x, y: _autocast(lambda: loss(head(x), y)))
    fn = torch.compile(lambda x, y: _autocast(lambda: loss(head(x), y)), fullgraph=True, backend='aot_eager', dynamic=False)
    for a,b in zip(step(head, loss, x, y, fn), eager): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

def _autocast(f):
    with torch.autocast('cpu', dtype=torch.bfloat16): return f()


@pytest.mark.parametrize('name', ['arcface', 'm1_2.5_combined', 'easy_margin'])
def test_inductor_values_and_gradients(name):
    "Compiled to C++ by inductor (fused elementwise kernels), values and gradients equal eager ones to float32 rounding"
    head, x, y = batch()
    check(head, CombinedMarginLoss(**OPTIONS[name]), x, y, 'inductor', rtol=1e-4, atol=1e-5)


def test_forward_and_backward_in_one_graph():
    "A whole step, `loss.backward()` included, compiles as one graph (dynamo traces the autograd call)"
    head, x, y = batch()
    loss = CombinedMarginLoss(m1=1.35, m2=.2, m3=.1)
    eager = step(head, loss, x, y)
    def whole(x):
        l = loss(head(x), y)
        l.backward()
        return l.detach()
    fn = torch.compile(whole, fullgraph=True, backend='aot_eager', dynamic=False)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        head.zero_grad(set_to_none=True)
        xc = x.clone().requires_grad_()
        l = fn(xc)
    for a,b in zip((l, xc.grad, head.weight.grad), eager): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_changing_margin_does_not_recompile_each_step():
    "A scheduled margin (`MarginScheduler` sets a new float every batch) costs at most one recompile, not one per value"
    from torch._dynamo.utils import counters
    counters.clear()   # dynamo's counters are global: count this test's graphs only
    head, x, y = batch()
    loss = CombinedMarginLoss(m2=.1)
    fn = torch.compile(lambda x, y: loss(head(x), y), fullgraph=True, backend='aot_eager')  # dynamic=None: floats too
    for m in torch.linspace(.1, .5, 6).tolist():
        loss.m2 = m
        l = fn(x, y)
        torch.testing.assert_close(l, CombinedMarginLoss(m2=m)(head(x), y))
    assert counters['stats']['unique_graphs'] <= 2


def test_fullgraph_per_class_margins():
    "Per-class m2 and m3 (tensors of C margins) trace as the scalar margins do"
    head, x, y = batch()
    check(head, CombinedMarginLoss(m2=torch.linspace(0., .5, 12), m3=torch.full((12,), .1)), x, y, 'aot_eager')


def test_fullgraph_head_with_norms():
    "`ArcFaceHead(norms=True)` attaches the feature norms to its output inside the graph"
    head, x, y = batch()
    head.norms = True
    check(head, CombinedMarginLoss(), x, y, 'aot_eager')


def test_check_device_under_compile_raises_on_cpu():
    "Under torch.compile the checks are a device-side assertion: on a CPU it still stops the step, with its message"
    head, x, y = batch()
    loss = CombinedMarginLoss()
    fn = torch.compile(lambda x, y: loss(head(x), y), fullgraph=True, backend='aot_eager', dynamic=False)
    fn(x, y)
    with pytest.raises(RuntimeError, match=r"class indices in \[0, 12\)"): fn(x, torch.where(y == y[0], 12, y))


def _family():
    try: from cosine_losses import family as fm
    except ImportError: return []
    return [pytest.param(lambda: fm.CurricularFaceLoss(s=30.), False, id='curricularface'),
            pytest.param(lambda: fm.ElasticFaceLoss(s=30.), False, id='elasticface'),
            pytest.param(lambda: fm.ElasticFaceLoss(s=30., kind='cos', plus=True), False, id='elasticface-cos-plus'),
            pytest.param(lambda: fm.AdaFaceLoss(s=30.), True, id='adaface'),
            pytest.param(lambda: fm.MagFaceLoss(s=30.), True, id='magface')]

@pytest.mark.parametrize('make,norms', _family())
def test_fullgraph_family(make, norms):
    "The losses of `cosine_losses.family` (if present): one graph, forward and backward, and the values of eager mode"
    head, x, y = batch()
    head.norms = norms
    eager_loss, comp_loss = make(), make()   # two copies: running statistics move with every training step
    torch.manual_seed(1); eager = step(head, eager_loss, x, y)
    fn = torch.compile(lambda x, y: comp_loss(head(x), y), fullgraph=True, backend='aot_eager', dynamic=False)
    torch.manual_seed(1); got = step(head, comp_loss, x, y, fn)   # ElasticFace draws its margins from the same RNG state
    for a,b in zip(got, eager): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a,b in zip(comp_loss.buffers(), eager_loss.buffers()): torch.testing.assert_close(a, b)
