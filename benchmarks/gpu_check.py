"""GPU check: head + loss speed, eager and compiled, in float32 and under fp16 / bf16 autocast; no host sync in a step;
then MNIST epochs of `cosine_learner` against `softmax_learner`, in float32 and with `to_fp16()`.

    python benchmarks/gpu_check.py                      # on a CUDA machine: a few minutes on an H100/H200
    python benchmarks/gpu_check.py --no-compile         # eager rows only (no inductor/triton compilation)
    python benchmarks/gpu_check.py --device cpu --quick # the same logic on a CPU (C ≤ 1000, 1 epoch, 2,048 images)
    python benchmarks/gpu_check.py --skip-bench --skip-train   # the fused path and Partial FC alone (section 4)

1. `ArcFaceHead` + `CombinedMarginLoss` (ArcFace m=0.5, s=30), forward + backward, against `nn.Linear(bias=False)` +
   `F.cross_entropy`, the naive formulation and pytorch-metric-learning's `ArcFaceLoss` (if installed): N=256, d=512,
   C in {10, 1000, 100000}; float32, then the forward under `torch.autocast` in fp16 and bf16 (backward outside it, as
   fastai does). Eager rows, and compiled rows (`linear_ce_compiled`, `ours_compiled`: the step function under
   `torch.compile(fullgraph=True)`). Median over interleaved samples (`torch.cuda.synchronize` around each), as ratios
   to Linear + CE (compiled rows: to compiled Linear + CE); CUDA peak memory likewise. Targets (issue 11): ours ≤ 1.25×
   Linear + CE at C = 100,000 in every precision, ≤ 1.5× at C = 1,000, faster than pml at every C.
2. No host synchronisation: one training step (forward, backward, SGD step) of a small body + `ArcFaceHead` +
   `CombinedMarginLoss` under `torch.cuda.set_sync_debug_mode('error')`, in float32, fp16 and bf16 autocast.
3. MNIST, `fit_one_cycle(5, 3e-2)`: `cosine_learner` and `softmax_learner` on the same body, in float32 and with
   `to_fp16()` (with `--compile-train`, also compiled with `Learner.compile()`): per-epoch accuracy and seconds, the
   cosine/softmax ratio of the median epoch after the first (target ≤ 1.05); fails if any loss is not finite. On a CPU
   `to_fp16` would be a no-op (fastai's `MixedPrecision` autocasts CUDA only), so there it is `to_autocast()` (bf16).
   MNIST from `--mnist`, else as `mnist_dls` finds it ($COSINE_LOSSES_MNIST, else fastai's download).
4. The fused path and Partial FC (issue 36), on CUDA (on a CPU only with --quick, at small sizes, to check the logic;
   else skipped): `fused_margin_loss` against `ArcFaceHead` + `CombinedMarginLoss` on the device (value, both gradients,
   `top` against the argmax), float32, C in {1000, 100000}, and under autocast (float16) the same float32 numbers;
   step time and CUDA peak memory of `fused`, `partial_fc_0.1` and `partial_fc_0.3` against Linear + CE and ours at C in
   {100000, 1000000} (N=256, d=512), Partial FC 0.1 against the full fused head (target ≤ 0.25× at C = 10⁶); and `cosine_learner(fused=True, sample_rate=0.3)` against
   `fused=False` on the device: two epochs of synthetic data, the same losses to float32 tolerance.
"""
from __future__ import annotations
import argparse, contextlib, math, os, statistics, sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).parent))
import head_loss as H

def cuda_peak(names, N, d, C, device, ctx):
    "Peak CUDA memory one step adds, per contender (exact: the caching allocator's own count)"
    res = {}
    for nm in names:
        torch.manual_seed(0)
        step = H.step_fn(*H.CONTENDERS[nm](C, d, device), *H.inputs(N, d, C, device), ctx=ctx)
        step(); torch.cuda.synchronize()  # cuBLAS workspaces and the like are not the contender's
        before = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
        step(); torch.cuda.synchronize()
        res[nm] = torch.cuda.max_memory_allocated() - before
        del step; torch.cuda.empty_cache()
    return res

def bench(device, Cs, repeats, N=256, d=512, compile=True):
    cuda = device.startswith('cuda')
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    names = [n for n in H.DEFAULT if n != 'pml' or H.have_pml()] + ['linear_ce_compiled', 'ours_compiled']*compile
    if 'pml' not in names: print('pytorch-metric-learning is not installed: skipping pml')
    print(f"\n== head + loss, forward + backward: N={N}, d={d}, ArcFace m=0.5 s=30, median of {repeats}; ratios to Linear + CE")
    print(f"{'precision':<9} {'C':>7} {'contender':<18} {'ms/step':>9} {'× time':>7} {'peak MiB':>9} {'× mem':>6}")
    worst = {}
    for prec,dt in ('float32', None), ('fp16', torch.float16), ('bf16', torch.bfloat16):
        ctx = (lambda dt=dt: torch.autocast(device.split(':')[0], dtype=dt)) if dt else contextlib.nullcontext
        for C in Cs:
            ts = H.time_all(names, N, d, C, repeats, sync=sync, device=device, ctx=ctx)
            ms = cuda_peak(names, N, d, C, device, ctx) if cuda else {}
            for nm in names:
                ref = 'linear_ce_compiled' if nm.endswith('_compiled') else 'linear_ce'
                mem = f"{ms[nm]/2**20:9.1f} {ms[nm]/max(ms[ref], 1):6.2f}" if ms else f"{'-':>9} {'-':>6}"
                print(f"{prec:<9} {C:>7} {nm:<18} {ts[nm]*1e3:9.3f} {ts[nm]/ts[ref]:7.2f} {mem}", flush=True)
            worst[prec, C] = ts['ours']/ts['linear_ce'], ts.get('pml', math.inf) > ts['ours']
            if compile: worst[prec, C, 'compiled'] = ts['ours_compiled']/ts['linear_ce_compiled'], ts['ours_compiled']/ts['linear_ce']
            # the loss itself must stay finite under autocast
            torch.manual_seed(0)
            mod,f = H.ours(C, d, device)
            x,y = H.inputs(N, d, C, device)
            with ctx(): v = f(x, y)
            assert torch.isfinite(v), f"non-finite loss {v.item()} at C={C} under {prec}"
    precs = ('float32', 'fp16', 'bf16')
    for C,target in (100000, 1.25), (1000, 1.5):
        if C not in Cs: continue
        r = [worst[p, C][0] for p in precs]
        print(f"ours/Linear+CE at C={C}: " + ", ".join(f"{p} {v:.2f}×" for p,v in zip(precs, r)) + f" (target ≤ {target}: {'yes' if max(r) <= target else 'NO'})")
        if compile: print(f"  compiled: ours/Linear+CE both compiled " + ", ".join(f"{p} {worst[p, C, 'compiled'][0]:.2f}×" for p in precs)
                          + "; ours compiled/Linear+CE eager " + ", ".join(f"{p} {worst[p, C, 'compiled'][1]:.2f}×" for p in precs))
    if 'pml' in names: print("ours faster than pml everywhere: " + ("yes" if all(v[1] for k,v in worst.items() if len(k) == 2) else "NO"))

def sync_check(device):
    "A training step of body + head + loss with host synchronisations turned into errors, in float32, fp16 and bf16"
    import torch.nn as nn
    from cosine_losses.heads import ArcFaceHead
    from cosine_losses.losses import CombinedMarginLoss
    print("\n== host synchronisations in a training step (torch.cuda.set_sync_debug_mode('error'))")
    for prec,dt in ('float32', None), ('fp16', torch.float16), ('bf16', torch.bfloat16):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(512, 128), nn.ReLU(), ArcFaceHead(128, 1000)).to(device)
        loss,opt = CombinedMarginLoss(),torch.optim.SGD(model.parameters(), lr=.1, momentum=.9)
        x,y = torch.randn(256, 512, device=device),torch.randint(0, 1000, (256,), device=device)
        def step():
            with torch.autocast('cuda', dtype=dt, enabled=dt is not None): l = loss(model(x), y)
            l.backward(); opt.step(); opt.zero_grad()
            return l
        step(); torch.cuda.synchronize()  # lazy initialisation outside the check
        torch.cuda.set_sync_debug_mode('error')
        try: step(); err = None
        except RuntimeError as e: err = str(e).splitlines()[0]
        finally: torch.cuda.set_sync_debug_mode('default')
        print(f"  {prec:<8} " + ("no host sync" if err is None else f"HOST SYNC: {err}"))

def fused_check(device, quick):
    "Section 4: the fused head + loss and Partial FC on the device: exact against the head and loss apart, their speed, the learner"
    import torch.nn.functional as F
    from cosine_losses.heads import ArcFaceHead
    from cosine_losses.losses import CombinedMarginLoss
    from cosine_losses.fused import fused_margin_loss
    cuda = device.startswith('cuda')
    if not (cuda or quick): return print("\n== fused and Partial FC: no CUDA device, skipped (--device cpu --quick checks the logic)")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    N,d = (64, 64) if quick else (256, 512)
    print(f"\n== fused_margin_loss against ArcFaceHead + CombinedMarginLoss on {device}, float32, N={N}, d={d}")
    for C in (100, 1000) if quick else (1000, 100000):
        g = torch.Generator().manual_seed(0)
        x,y = torch.randn(N, d, generator=g).to(device),torch.randint(0, C, (N,), generator=g).to(device)
        head = ArcFaceHead(d, C).to(device)
        xa = x.clone().requires_grad_()
        cos = head(xa)
        CombinedMarginLoss(s=30., m2=.5)(cos, y).backward()
        xb,wb = x.clone().requires_grad_(),head.weight.detach().clone().requires_grad_()
        top = torch.empty(N, dtype=torch.long, device=device)
        loss = fused_margin_loss(xb, wb, y, s=30., m2=.5, top=top)
        loss.backward()
        ref = CombinedMarginLoss(s=30., m2=.5)(cos.detach(), y)
        err = lambda a,b: ((a - b).abs().max()/b.abs().max().clamp_min(1e-30)).item()
        ok = err(loss, ref) < 1e-5 and err(xb.grad, xa.grad) < 1e-4 and err(wb.grad, head.weight.grad) < 1e-4 and torch.equal(top, cos.argmax(1))
        print(f"  C={C:>7}: loss {err(loss, ref):.1e}, grad x {err(xb.grad, xa.grad):.1e}, grad W {err(wb.grad, head.weight.grad):.1e} (relative to the largest), "
              f"top = argmax: {torch.equal(top, cos.argmax(1))}  {'ok' if ok else 'DIFFERENT'}")
        half = torch.float16 if cuda else torch.bfloat16  # under autocast (`MixedPrecision`) the fused step still computes in float32
        xh,wh = x.clone().requires_grad_(),head.weight.detach().clone().requires_grad_()
        with torch.autocast(device.split(':')[0], dtype=half): lh = fused_margin_loss(xh, wh, y, s=30., m2=.5)
        lh.backward()
        same = err(lh, loss) < 1e-6 and err(xh.grad, xb.grad) < 1e-6 and err(wh.grad, wb.grad) < 1e-6
        print(f"           under autocast ({half}): loss {lh.dtype}, {err(lh, loss):.1e} from float32  {'ok' if same else 'DIFFERENT'}")
    names = ['linear_ce', 'ours', 'fused', 'partial_fc_0.1', 'partial_fc_0.3']
    print(f"\n== fused and Partial FC, forward + backward (Partial FC: sample, gather, write back), N={N}, d={d}; ratios to Linear + CE")
    print(f"{'C':>8} {'contender':<15} {'ms/step':>9} {'× time':>7} {'peak MiB':>9} {'× mem':>6}")
    for C in (1000, 10000) if quick else (100000, 1000000):
        ts = H.time_all(names, N, d, C, 3 if quick else 7, sync=sync, device=device)
        ms = cuda_peak(names, N, d, C, device, contextlib.nullcontext) if cuda else {}
        for nm in names:
            mem = f"{ms[nm]/2**20:9.1f} {ms[nm]/max(ms['linear_ce'], 1):6.2f}" if ms else f"{'-':>9} {'-':>6}"
            print(f"{C:>8} {nm:<15} {ts[nm]*1e3:9.3f} {ts[nm]/ts['linear_ce']:7.2f} {mem}", flush=True)
        print(f"  Partial FC 0.1 / fused full head at C={C}: {ts['partial_fc_0.1']/ts['fused']:.2f}× (target ≤ 0.25 at 10⁶)")
    learner_check(device)

def learner_check(device):
    "`cosine_learner(fused=True, sample_rate=0.3)` against `fused=False` on `device`: the same losses after two epochs"
    from fastai.torch_core import set_seed
    from cosine_losses.data import tensor_dls
    from cosine_losses.learner import cosine_learner
    def blocks(n, seed, C=40):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, C, (n,), generator=g)
        x = torch.randint(0, 60, (n, 12, 12), generator=g, dtype=torch.uint8)
        for i,c in enumerate(y.tolist()): x[i, c//8*2:c//8*2+3, c%8:c%8+3] += 150
        return x, y
    vals = {}
    for fused in False,True:
        set_seed(0, reproducible=True)
        learn = cosine_learner(tensor_dls(*blocks(512, 0), *blocks(128, 1), bs=64, device=torch.device(device)), emb_size=32,
                               fused=fused, sample_rate=.3)
        with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2)
        vals[fused] = torch.tensor(learn.recorder.values, dtype=torch.float64)
    diff = (vals[True] - vals[False]).abs().max().item()
    print(f"\n== cosine_learner(sample_rate=0.3) on {device}, fused against not: largest difference of losses and accuracy {diff:.1e} "
          + ("ok" if diff < 1e-3 else "DIFFERENT") + f"; last epoch {vals[True][-1].tolist()}")

def mnist_folder(arg): return arg or None  # None: `mnist_dls` looks in $COSINE_LOSSES_MNIST, then downloads

def train(device, path, epochs, lr, quick, compile=False):
    from fastai.callback.core import Callback
    from fastai.torch_core import set_seed
    from cosine_losses.data import mnist_dls
    from cosine_losses.learner import cosine_learner, softmax_learner
    import cosine_losses.callbacks  # Learner.to_autocast
    import cosine_losses.compile  # Learner.compile
    cuda = device.startswith('cuda')
    n = dict(n_train=2048, n_valid=512) if quick else {}
    print(f"\n== cosine_learner and softmax_learner on MNIST ({path or 'download'}{', first 2,048/512 images' if quick else ''}): "
          f"fit_one_cycle({epochs}, {lr}), bs=256, ArcFace m2=0.5 s=30")

    class EpochClock(Callback):
        "Seconds per epoch, training losses that are not finite, steps the fp16 grad scaler skipped"
        order = 60
        def before_fit(self): self.secs,self.bad,self.skipped = [],0,0
        def before_epoch(self): self.t = time.perf_counter()
        def after_batch(self):
            if self.training and not torch.isfinite(self.learn.loss).all(): self.bad += 1
        def after_cancel_step(self): self.skipped += 1
        def after_epoch(self):
            if cuda: torch.cuda.synchronize()
            self.secs.append(time.perf_counter() - self.t)

    res = {}
    half_name = 'fp16 (to_fp16)' if cuda else 'bf16 (to_autocast)'
    for comp in (False, True) if compile else (False,):
        for prec in 'float32', half_name:
            for kind,make in ('softmax', softmax_learner), ('cosine', cosine_learner):
                set_seed(0)
                dls = mnist_dls(path, bs=256, device=torch.device(device), **n)
                clock = EpochClock()
                learn = make(dls, cbs=clock)
                if prec != 'float32': learn = learn.to_fp16() if cuda else learn.to_autocast(torch.bfloat16)
                if comp: learn = learn.compile()
                name = f"{kind:<7} {prec}" + ", compiled"*comp
                with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr)
                vals = learn.recorder.values
                print(f"{name}:")
                for i,(v,s) in enumerate(zip(vals, clock.secs)):
                    print(f"  epoch {i}  train loss {v[0]:.4f}  valid loss {v[1]:.4f}  accuracy {v[2]*100:6.2f}%  {s:6.2f} s")
                print(f"  non-finite training losses: {clock.bad}; grad-scaler skipped steps: {clock.skipped}")
                assert clock.bad == 0 and all(math.isfinite(v[0]) and math.isfinite(v[1]) for v in vals), f"{name}: NaN/inf loss {vals}"
                res[kind, prec, comp] = vals[-1][2], statistics.median(clock.secs[1:] or clock.secs)  # epoch 0 pays warm-up and compilation
    print("\nmedian epoch after the first, cosine/softmax (target ≤ 1.05):")
    for (kind,prec,comp),(acc,sec) in res.items():
        if kind != 'cosine': continue
        sacc,ssec = res['softmax', prec, comp]
        print(f"  {prec + (', compiled' if comp else ''):<30} cosine {sec:6.2f} s ({acc*100:.2f}%)  softmax {ssec:6.2f} s ({sacc*100:.2f}%)  ratio {sec/ssec:.2f}"
              + ("" if sec/ssec <= 1.05 else "  ABOVE 1.05"))

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--quick', action='store_true', help='C ≤ 1000, 3 repeats, 1 epoch on 2,048 images: checks the logic')
    p.add_argument('--repeats', type=int, help='timed samples per contender (default 15, quick 3)')
    p.add_argument('--C', type=int, nargs='+', help='numbers of classes (default 10 1000 100000, quick 10 1000)')
    p.add_argument('--epochs', type=int, help='MNIST epochs (default 5, quick 1)')
    p.add_argument('--lr', type=float, default=3e-2)
    p.add_argument('--threads', type=int, default=1, help='torch.set_num_threads on a CPU (one: small shared machines)')
    p.add_argument('--mnist', help='MNIST folder (IDX files, gzipped or not)')
    p.add_argument('--no-compile', action='store_true', help='no compiled rows (no inductor/triton compilation)')
    p.add_argument('--compile-train', action='store_true', help='also train compiled learners (Learner.compile())')
    p.add_argument('--skip-bench', action='store_true'); p.add_argument('--skip-train', action='store_true')
    p.add_argument('--skip-fused', action='store_true', help='skip section 4, the fused path and Partial FC')
    a = p.parse_args(argv)
    if a.device.startswith('cuda') and not torch.cuda.is_available(): sys.exit("no CUDA device: use --device cpu --quick")
    if not a.device.startswith('cuda'): torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    dev = torch.cuda.get_device_name(a.device) if a.device.startswith('cuda') else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {dev}" + (", --quick" if a.quick else ""))
    if not a.skip_bench: bench(a.device, a.C or ([10, 1000] if a.quick else [10, 1000, 100000]), a.repeats or (3 if a.quick else 15), compile=not a.no_compile)
    if a.device.startswith('cuda'): sync_check(a.device)
    if not a.skip_fused: fused_check(a.device, a.quick)
    if not a.skip_train: train(a.device, mnist_folder(a.mnist), a.epochs or (1 if a.quick else 5), a.lr, a.quick, a.compile_train)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")

if __name__ == '__main__': main()
