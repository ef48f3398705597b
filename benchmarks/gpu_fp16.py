"""GPU check: head + loss speed in float32 / fp16 / bf16 autocast, and 5-epoch MNIST runs with `to_fp16()`.

    python benchmarks/gpu_fp16.py [--data PATH] [--epochs 5] [--reps 30]

Prints milliseconds per forward + backward (median of `reps`, CUDA events) of ArcFaceHead + CombinedMarginLoss
against Linear(bias=False) + cross-entropy at N=256, d=512, C in {10, 1000, 100000}, then trains cosine_learner
(ArcFace m2=0.5) in fp16 mixed precision and in float32, and softmax_learner in fp16, asserting finite losses.
"""
import time, math, torch, torch.nn as nn, torch.nn.functional as F
from fastcore.script import call_parse
from cosine_losses.heads import ArcFaceHead
from cosine_losses.losses import CombinedMarginLoss

def _time(f, reps):
    for _ in range(3): f()
    ts = []
    for _ in range(reps):
        a,b = torch.cuda.Event(enable_timing=True),torch.cuda.Event(enable_timing=True)
        a.record(); f(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts)//2]

def head_loss(reps):
    N,d = 256,512
    print(f'head + loss, forward + backward, N={N} d={d}: median ms (ratio to Linear + CE)')
    for C in (10, 1000, 100_000):
        x,y = torch.randn(N, d, device='cuda', requires_grad=True),torch.randint(0, C, (N,), device='cuda')
        lin,head,lf = nn.Linear(d, C, bias=False).cuda(),ArcFaceHead(d, C).cuda(),CombinedMarginLoss(30., m2=.5)
        for name,dt in (('float32', None), ('fp16', torch.float16), ('bf16', torch.bfloat16)):
            def run(model, loss):
                def f():
                    with torch.autocast('cuda', dtype=dt or torch.float32, enabled=dt is not None):
                        l = loss(model(x), y)
                    l.backward()
                return f
            t_lin = _time(run(lin, F.cross_entropy), reps)
            t_ours = _time(run(head, lf), reps)
            with torch.autocast('cuda', dtype=dt or torch.float32, enabled=dt is not None): v = lf(head(x), y)
            assert torch.isfinite(v), (C, name, v)
            print(f'  C={C:>7,} {name:7s}: Linear+CE {t_lin:7.3f} ms   ours {t_ours:7.3f} ms   ratio {t_ours/t_lin:.2f}')

@call_parse
def main(data:str=None, # MNIST folder; default $COSINE_LOSSES_MNIST
         epochs:int=5, # epochs per MNIST run
         reps:int=30): # timing repeats
    assert torch.cuda.is_available(), 'needs a CUDA device'
    print(torch.__version__, torch.cuda.get_device_name())
    head_loss(reps)
    from fastai.vision.all import set_seed
    from cosine_losses.data import mnist_dls
    from cosine_losses.learner import cosine_learner, softmax_learner
    dls = mnist_dls(data, bs=256)
    for name,make,fp16 in (('cosine fp16', cosine_learner, True), ('cosine fp32', cosine_learner, False), ('softmax fp16', softmax_learner, True)):
        set_seed(0)
        learn = make(dls)
        if fp16: learn = learn.to_fp16()
        t = time.time()
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, 3e-2)
        vals = learn.recorder.values
        assert all(math.isfinite(v[0]) and math.isfinite(v[1]) for v in vals), vals
        print(f'{name}: accuracy per epoch {[round(v[2]*100, 2) for v in vals]}, {(time.time()-t)/epochs:.1f} s/epoch, '
              f'losses finite; output dtype {learn.model(dls.one_batch()[0][:2]).dtype}')
