"""On a CUDA device a training step of `ArcFaceHead` + `CombinedMarginLoss` never waits for the device.

`torch.cuda.set_sync_debug_mode('error')` makes every host synchronisation (`.item()`, `bool(tensor)`, a blocking copy
to the host) raise, so a forward, backward and optimiser step run under it prove there is none. Bad labels must still
stop the run: the device-side assertion does it at the next synchronisation (in a child process, since a failed device
assertion leaves the CUDA context unusable). Skipped without CUDA; `benchmarks/gpu_check.py` runs the same check."""
import subprocess, sys, textwrap
import pytest, torch, torch.nn as nn

from cosine_losses.heads import ArcFaceHead
from cosine_losses.losses import CombinedMarginLoss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

OPTIONS = [dict(m2=.5), dict(m1=1.35, m2=0.), dict(m2=.4, m3=.2, easy_margin=True), dict(m2=.5, detach_margin=True),
           dict(m2='per-class')]


def one_step(loss, k=1, dtype=None):
    "Forward, backward and an SGD step of a small body + `ArcFaceHead` + `loss` with host syncs turned into errors"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), ArcFaceHead(16, 100, k=k)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=.1, momentum=.9)
    x, y = torch.randn(64, 32, device='cuda'), torch.randint(0, 100, (64,), device='cuda')
    loss = loss.cuda() if isinstance(loss, nn.Module) else loss
    for _ in range(2): loss(model(x), y)  # warm-up: lazy initialisation (cuBLAS handles, margins moved to the device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        with torch.autocast('cuda', dtype=dtype, enabled=dtype is not None):
            l = loss(model(x), y)
        l.backward()
        opt.step(); opt.zero_grad()
    finally: torch.cuda.set_sync_debug_mode('default')
    assert torch.isfinite(l).item()


@pytest.mark.parametrize('kw', OPTIONS, ids=[str(o) for o in OPTIONS])
def test_no_host_sync_in_a_training_step(kw):
    if kw.get('m2') == 'per-class': kw = dict(m2=torch.linspace(.2, .5, 100))
    one_step(CombinedMarginLoss(**kw))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_no_host_sync_under_autocast(dtype):
    one_step(CombinedMarginLoss(), dtype=dtype)


def test_no_host_sync_with_subcentres():
    one_step(CombinedMarginLoss(), k=3)


def test_host_checks_do_sync():
    "The test can fail: check='host' reads the labels back, and sync debug mode catches it"
    with pytest.raises(RuntimeError, match='synchroniz'): one_step(CombinedMarginLoss(check='host'))


@pytest.mark.parametrize('bad', ['label', 'nan'])
def test_bad_input_stops_the_run(bad):
    "A label out of range or a NaN cosine trips the device-side assertion: the run stops at the next synchronisation"
    code = textwrap.dedent(f"""
        import torch
        from cosine_losses.losses import CombinedMarginLoss
        cos, y = torch.rand(8, 10, device='cuda'), torch.randint(0, 10, (8,), device='cuda')
        if {bad!r} == 'label': y[3] = 10
        else: cos[2, 5] = float('nan')
        l = CombinedMarginLoss()(cos, y)
        torch.cuda.synchronize()
        print('NOT STOPPED')
    """)
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and 'NOT STOPPED' not in r.stdout
    assert 'device-side assert' in r.stderr or 'Assertion' in r.stderr, r.stderr[-2000:]
