"""Head + loss, forward + backward: `ArcFaceHead` + `CombinedMarginLoss` against `nn.Linear` + cross-entropy.

Prints a table of median step times and peak memory, each as a ratio to Linear + CE, for N features of size d and
C classes. Contenders (all ArcFace m=0.5, s=30 except the plain softmax baseline):

- linear_ce: `nn.Linear(d, C, bias=False)` + `F.cross_entropy`, the cost we aim at
- ours:      `ArcFaceHead(d, C)` + `CombinedMarginLoss(s=30, m2=0.5)`
- naive:     the straightforward formulation: normalise the C×d centres every step, margin a full one-hot copy of the logits
- pml:       pytorch-metric-learning's `ArcFaceLoss` (margin in degrees: 28.65° = 0.5 rad), if it is installed
- fused:     `fused_margin_loss(x, ArcFaceHead(d, C).weight, y, s=30, m2=0.5)`: the rows in blocks of at most 2²⁶ cosines,
             gradients made in the forward; fused_2e24, fused_2e28: blocks of 2²⁴ and 2²⁸ cosines
- partial_fc_0.1, partial_fc_0.3: Partial FC as `cosine_learner(sample_rate=...)` trains, the batch's classes and
             uniform others (rate·C in all) drawn by `ArcFaceHead.sample`, their rows gathered into a small parameter, the
             loss on them alone (fused from `_FUSED_FROM` classes on, as the learner), the rows written back after the step
- on request (--contenders): ours_host / ours_device / ours_nocheck, ours with `check='host'`, `'device'`, `False`; and
  linear_ce_compiled / ours_compiled, the step function `torch.compile`d (inductor, fullgraph)

Time: every contender runs in the same process, interleaved (the order rotates every repeat), one sample being the mean
of enough steps to last ~50 ms; we report the median of `--repeats` samples. With --rebuild each sample has its own freshly
allocated parameters and inputs: on this machine one placement can make a contender a few % faster or slower for a whole run. Memory: each (contender, C) runs in a fresh
subprocess; after building the parameters and inputs (and one warm-up step at C=10 to load the kernels) we reset the
kernel's high-water mark (/proc/self/clear_refs) and report VmHWM − VmRSS-before-the-step: the peak resident memory the
forward + backward adds, W's gradient included. That is what the OS had to give the process (glibc malloc as configured,
allocator effects included: tensors over 32 MB are always their own mappings, returned on free), not an estimate.

    python benchmarks/head_loss.py                      # C = 10, 1000, 100000, 1 thread
    python benchmarks/head_loss.py --C 100000 --repeats 11 --threads 2
    python benchmarks/head_loss.py --C 1000 100000 --contenders linear_ce ours ours_device ours_nocheck --no-memory
    python benchmarks/head_loss.py --checks            # the input checks alone, per step
    python benchmarks/head_loss.py --C 1000000 --contenders linear_ce fused partial_fc_0.1 --load 2   # beside 2 busy processes
    python benchmarks/head_loss.py --C 10000000 --d 128 --contenders partial_fc_0.1 --adam --no-time  # 10⁷ identities, Adam

--adam adds fastai's `Adam` step (decoupled weight decay 0.1) to every step: dense for the full heads, the sampled rows
and their moments only for Partial FC (`HeadTraining`'s `_rows_in`/`_rows_out`). Memory then also reports the process's
whole peak (VmHWM: centres, their moments and the step), and refuses to start a child that would not fit in MemAvailable.
"""
from __future__ import annotations
import argparse, contextlib, gc, json, math, os, statistics, subprocess, sys, time
import torch, torch.nn as nn, torch.nn.functional as F

S, M = 30., 0.5

def _param(C, d, device):
    w = torch.empty(C, d, device=device)
    nn.init.xavier_normal_(w)
    return nn.Parameter(w)

def linear_ce(C, d, device='cpu'):
    lin = nn.Linear(d, C, bias=False, device=device)
    return lin, lambda x, y: F.cross_entropy(lin(x), y)

def ours(C, d, device='cpu', **kw):
    from cosine_losses.heads import ArcFaceHead
    from cosine_losses.losses import CombinedMarginLoss
    head,loss = ArcFaceHead(d, C).to(device),CombinedMarginLoss(s=S, m2=M, **kw)
    return head, lambda x, y: loss(head(x), y)

def fused(C, d, device='cpu', block=2**26):
    from cosine_losses.heads import ArcFaceHead
    from cosine_losses.fused import fused_margin_loss
    head = ArcFaceHead(d, C).to(device)
    return head, lambda x, y: fused_margin_loss(x, head.weight, y, s=S, m2=M, block=block)

def partial_fc(C, d, device='cpu', rate=.1, adam=False):
    "The learner's Partial FC step: sample, gather the rows into a parameter, the loss on them, and (after the step) write them back"
    from cosine_losses.heads import ArcFaceHead
    from cosine_losses.learner import _FUSED_FROM, _rows_in, _rows_out
    from cosine_losses.fused import fused_margin_loss
    from cosine_losses.losses import CombinedMarginLoss
    head,loss = ArcFaceHead(d, C, sample_rate=rate).to(device),CombinedMarginLoss(s=S, m2=M)
    fused = C >= _FUSED_FROM
    class Step(nn.Module):
        "Holds no parameter of its own: the sampled rows are a fresh one each step"
        def __init__(self): super().__init__(); self.head,self.sub = head,None
        def loss(self, x, y):
            keep = head.sample(y)
            self.sub,self.rows = nn.Parameter(head.weight.detach()[keep]),keep
            t = torch.searchsorted(keep, y)
            return fused_margin_loss(x, self.sub, t, s=S, m2=M) if fused else loss(F.linear(F.normalize(x), F.normalize(self.sub)), t)
        def update(self, opt):
            "The optimiser's step on the sampled rows only, and the rows back into the centres"
            if opt is None:
                with torch.no_grad(): head.weight[self.rows] = self.sub
                return
            full = _rows_in(opt, head.weight, self.sub, self.rows)
            opt.step()
            _rows_out(opt, head.weight, self.sub, self.rows, full)
    m = Step()
    return m, m.loss

def compiled(make):
    "`make`'s step function compiled with `torch.compile` (inductor; forward and backward graphs, fullgraph)"
    def build(C, d, device='cpu'):
        import torch._dynamo
        torch._dynamo.reset()
        mod,f = make(C, d, device)
        return mod, torch.compile(f, fullgraph=True, dynamic=False)
    return build

def naive_loss(x, w, y, s=S, m=M):
    "The straightforward ArcFace: normalised centres every step, margin applied through a full (N, C) one-hot copy"
    cos = (F.normalize(x.float(), dim=1) @ F.normalize(w.float(), dim=1).t()).float()  # half under autocast
    cos_y = cos.gather(1, y[:, None]).squeeze(1)
    th = torch.acos(cos_y.clamp(-1 + 1e-7, 1 - 1e-7))
    psi = torch.where(th <= math.pi - m, torch.cos(th + m), cos_y - m*math.sin(m))
    onehot = F.one_hot(y, cos.shape[1]).to(cos.dtype)
    return F.cross_entropy(s*(cos*(1 - onehot) + psi[:, None]*onehot), y)

def naive(C, d, device='cpu'):
    w = _param(C, d, device)
    return nn.ParameterList([w]), lambda x, y: naive_loss(x, w, y)

def pml(C, d, device='cpu'):
    from pytorch_metric_learning.losses import ArcFaceLoss
    loss = ArcFaceLoss(num_classes=C, embedding_size=d, margin=math.degrees(M), scale=S).to(device)
    return loss, lambda x, y: loss(x, y)

def have_pml():
    try: import pytorch_metric_learning; return True
    except ImportError: return False

CONTENDERS = dict(linear_ce=linear_ce, ours=ours, naive=naive, pml=pml,
                  ours_host=lambda C, d, device='cpu': ours(C, d, device, check='host'),  # checks read back to the host
                  ours_device=lambda C, d, device='cpu': ours(C, d, device, check='device'),  # one device-side assertion
                  ours_nocheck=lambda C, d, device='cpu': ours(C, d, device, check=False),
                  linear_ce_compiled=compiled(linear_ce), ours_compiled=compiled(ours),
                  fused=fused, fused_2e24=lambda C, d, device='cpu': fused(C, d, device, 2**24), fused_2e28=lambda C, d, device='cpu': fused(C, d, device, 2**28))
for r in (.1, .3): CONTENDERS[f'partial_fc_{r}'] = lambda C, d, device='cpu', r=r: partial_fc(C, d, device, r)
DEFAULT = ['linear_ce', 'ours', 'naive', 'pml']

def inputs(N, d, C, device='cpu', seed=0):
    g = torch.Generator(device='cpu').manual_seed(seed)
    x = torch.randn(N, d, generator=g).to(device).requires_grad_(True)
    return x, torch.randint(0, C, (N,), generator=g).to(device)

def step_fn(module, f, x, y, ctx=contextlib.nullcontext, adam=False):
    "One training step of the head + loss: forward (inside `ctx`, e.g. autocast), backward into x and the centres (and Adam's step)"
    params,opt = list(module.parameters()),None
    if adam:
        from fastai.optimizer import Adam
        opt = Adam([module.head.weight] if hasattr(module, 'update') else params, lr=1e-3, wd=.1)
    def step():
        x.grad = None
        for p in params: p.grad = None
        with ctx(): loss = f(x, y)
        loss.backward()
        if hasattr(module, 'update'): module.update(opt)  # Partial FC: the sampled rows' step, then back into the centres
        elif opt is not None: opt.step()
        if opt is None:  # the gradients go: contenders interleaved in one process must not each hold a C×d one between steps
            x.grad = None
            for p in params: p.grad = None
    return step

# ---------------------------------------------------------------- time
def time_all(names, N, d, C, repeats, min_s=0.05, sync=lambda: None, device='cpu', ctx=contextlib.nullcontext, adam=False, rebuild=False):
    "Median seconds per step of each contender, sampled interleaved in this process; `rebuild`: fresh parameters and inputs every sample"
    held = {nm: _need(nm, 0, d, C, adam, held=True) for nm in names}  # one step at a time beside every contender's centres
    need = sum(held.values()) + max(_need(nm, N, d, C, adam) - held[nm] for nm in names)
    if need + 2**31 > (avail := _status_file('/proc/meminfo', 'MemAvailable')):
        print(f"skipping the timing at C={C}: {', '.join(names)} together need about {need/2**30:.1f} GiB, {avail/2**30:.1f} GiB available", flush=True)
        return {nm: math.nan for nm in names}
    def build(nm, seed=0):
        torch.manual_seed(seed)
        return step_fn(*CONTENDERS[nm](C, d, device), *inputs(N, d, C, device, seed=seed), ctx=ctx, adam=adam)
    steps = {nm: build(nm) for nm in names}
    iters = {}
    for nm,run in steps.items():  # warm up, then size each sample to last about min_s
        run(); sync(); t = time.perf_counter(); run(); sync()
        iters[nm] = max(1, math.ceil(min_s/(time.perf_counter() - t)))
    samples = {nm: [] for nm in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for nm in order:
            if rebuild:  # where the allocator puts a contender's tensors shifts its speed by a few %: a new placement each sample
                steps[nm] = None; gc.collect()
                steps[nm] = build(nm, r)
                for _ in range(2): steps[nm]()  # the first steps of fresh tensors pay their page faults
            sync(); t = time.perf_counter()
            for _ in range(iters[nm]): steps[nm]()
            sync(); samples[nm].append((time.perf_counter() - t)/iters[nm])
    del steps; gc.collect()
    return {nm: statistics.median(v) for nm,v in samples.items()}

# ---------------------------------------------------------------- memory
def _status(key):
    with open('/proc/self/status') as f:
        for l in f:
            if l.startswith(key): return int(l.split()[1])*1024
    raise KeyError(key)

def _peak_child(name, N, d, C, threads, adam=False):
    "Run in a fresh process: peak resident bytes one forward + backward (+ Adam step) adds, and the process's whole peak"
    torch.set_num_threads(threads)
    def build(c):
        torch.manual_seed(0)
        return step_fn(*CONTENDERS[name](c, d), *inputs(N, d, c), adam=adam)
    build(10)(); gc.collect()  # a step at C=10 loads kernels and thread pools, so they are not counted against C
    step = build(C)
    before = _status('VmRSS')
    with open('/proc/self/clear_refs', 'w') as fh: fh.write('5')  # reset VmHWM to the current RSS
    step()
    return dict(peak=_status('VmHWM') - before, whole=_status('VmHWM'))

def _need(name, N, d, C, adam, held=False) -> float:
    "Bytes a contender holds at its step's peak, roughly: centres, Adam's moments, the gradient or the sampled rows (and theirs), logits or blocks"
    if held: return 4*C*d*(1 + 2*adam)  # between steps: the centres and Adam's moments
    from cosine_losses.learner import _FUSED_FROM
    part = name.startswith('partial_fc')
    rate = float(name.rsplit('_', 1)[1]) if part else 1.
    n = C*d*(1 + 2*adam) + rate*C*d*((2 + 2*adam) if part else 1)
    n += 2**26 if name.startswith('fused') or (part and C >= _FUSED_FROM) else (2 if name.startswith('linear_ce') else 1)*N*C*rate
    return 4*n

def peak_mem(name, N, d, C, threads, adam=False):
    avail = _status_file('/proc/meminfo', 'MemAvailable')
    if _need(name, N, d, C, adam) + 2**31 > avail:  # 2 GiB to spare: the machine is shared
        print(f"skipping {name} at C={C}: it needs about {_need(name, N, d, C, adam)/2**30:.1f} GiB, {avail/2**30:.1f} GiB available", flush=True)
        return None
    cmd = [sys.executable, __file__, '--_child', name, '--N', str(N), '--d', str(d), '--C', str(C), '--threads', str(threads)] + ['--adam']*adam
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])

def _status_file(path, key):
    with open(path) as f:
        for l in f:
            if l.startswith(key): return int(l.split()[1])*1024
    raise KeyError(key)

@contextlib.contextmanager
def busy(k:int):
    "`k` CPU-bound processes beside the measurement (single-threaded matrix products), as other training jobs on the machine"
    code = "import torch; torch.set_num_threads(1); a = torch.randn(1024, 1024)\nwhile True: a @ a"
    procs = [subprocess.Popen([sys.executable, '-c', code]) for _ in range(k)]
    try:
        if k: time.sleep(3)  # past their start-up
        yield
    finally:
        for p in procs: p.kill(); p.wait()

# ---------------------------------------------------------------- input checks
def time_checks(N, C, reps=20):
    "Milliseconds the loss's input checks take alone: host (`check='host'`, CPU default) and device-side (`'device'`)"
    from cosine_losses.losses import _check_values, _assert_values
    cos,y = torch.rand(N, C)*2 - 1,torch.randint(0, C, (N,))
    res = {}
    for nm,f in ('host', _check_values), ('device', _assert_values):
        f(cos, y); t = time.perf_counter()
        for _ in range(reps): f(cos, y)
        res[nm] = (time.perf_counter() - t)/reps*1e3
    return res

# ---------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--C', type=int, nargs='+', default=[10, 1000, 100000], help='numbers of classes')
    p.add_argument('--N', type=int, default=256, help='batch size')
    p.add_argument('--d', type=int, default=512, help='feature size')
    p.add_argument('--repeats', type=int, default=7, help='timed samples per contender (median reported)')
    p.add_argument('--threads', type=int, default=1, help='torch.set_num_threads')
    p.add_argument('--contenders', nargs='+', default=DEFAULT, choices=list(CONTENDERS),
                   help="also: ours_host, ours_device, ours_nocheck (the `check=` choices), linear_ce_compiled, ours_compiled (torch.compile)")
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory subprocesses')
    p.add_argument('--no-time', action='store_true', help='skip the timing (memory only)')
    p.add_argument('--adam', action='store_true', help="add fastai's Adam step (wd 0.1) to each step: Partial FC's on the sampled rows only")
    p.add_argument('--load', type=int, default=0, help='run this many CPU-bound processes beside the timing, as a loaded machine')
    p.add_argument('--csv', help='also write the rows to this CSV file')
    p.add_argument('--rebuild', action='store_true', help='fresh parameters and inputs for every timed sample (two warm-up steps each)')
    p.add_argument('--min-s', type=float, default=.05, help='seconds a timed sample lasts at least (steps averaged)')
    p.add_argument('--checks', action='store_true', help="time the loss's input checks alone (check='host' and 'device'), then exit")
    p.add_argument('--_child', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._child:
        print(json.dumps(_peak_child(a._child, a.N, a.d, a.C[0], a.threads, a.adam))); return
    torch.set_num_threads(a.threads)
    if a.checks:
        for C in a.C:
            r = time_checks(a.N, C)
            print(f"C={C:>7}: input checks host {r['host']:7.2f} ms, device-side {r['device']:7.2f} ms a step")
        return
    names = [n for n in a.contenders if n != 'pml' or have_pml()]
    if 'linear_ce' not in names: names.insert(0, 'linear_ce')
    if len(names) < len(a.contenders) + ('linear_ce' not in a.contenders): print('pytorch-metric-learning is not installed: skipping pml')
    print(f"torch {torch.__version__}, float32, CPU, {a.threads} thread(s), N={a.N}, d={a.d}, ArcFace m=0.5 s=30, "
          f"median of {a.repeats}" + ("" if a.no_memory else "; memory: peak RSS growth of one step, fresh process each")
          + (f"; {a.load} busy processes beside" if a.load else "") + ("; with Adam" if a.adam else ""))
    print(f"{'C':>8} {'contender':<15} {'ms/step':>9} {'× time':>7} {'peak MiB':>9} {'× mem':>6} {'whole MiB':>10}")
    res,rows = {},[]
    for C in a.C:
        if a.no_time: ts = {nm: math.nan for nm in names}
        else:
            with busy(a.load): ts = time_all(names, a.N, a.d, C, a.repeats, a.min_s, adam=a.adam, rebuild=a.rebuild)
        ms = {} if a.no_memory else {nm: peak_mem(nm, a.N, a.d, C, a.threads, a.adam) for nm in names}
        for nm in names:
            m,base = ms.get(nm),ms.get('linear_ce')
            # below a few MiB the figures are at page resolution and malloc's heap: no ratio
            ratio = m['peak']/base['peak'] if m and base and base['peak'] >= 2**21 else math.nan
            mem = f"{m['peak']/2**20:9.1f} {ratio:6.2f} {m['whole']/2**20:10.1f}" if m else f"{'-':>9} {'-':>6} {'-':>10}"
            print(f"{C:>8} {nm:<15} {ts[nm]*1e3:9.2f} {ts[nm]/ts['linear_ce']:7.2f} {mem}", flush=True)
            rows.append(dict(C=C, N=a.N, d=a.d, threads=a.threads, load=a.load, adam=a.adam, contender=nm, ms_step=ts[nm]*1e3,
                             x_time=ts[nm]/ts['linear_ce'], peak_mib=m['peak']/2**20 if m else math.nan, x_mem=ratio,
                             whole_mib=m['whole']/2**20 if m else math.nan))
        res[C] = dict(time=ts, mem={k: v['peak'] for k,v in ms.items() if v})
        if a.csv:  # after each C: a long run stopped half-way keeps what it measured
            import csv
            os.makedirs(os.path.dirname(a.csv) or '.', exist_ok=True)
            with open(a.csv, 'w', newline='') as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader(); w.writerows(rows)
    if 'fused' in names and not a.no_time:
        worst = max(r['time']['fused']/r['time']['linear_ce'] for r in res.values())
        print(f"fused at most {worst:.2f}× Linear+CE over C = {', '.join(map(str, a.C))} (target ≤ 1.05)" + ("; faster than pml's ArcFaceLoss at every C: " + (
            "yes" if all(r['time']['fused'] < r['time']['pml'] for r in res.values()) else "NO") if 'pml' in names else ""))
    if 'ours' in names and 100000 in a.C and not a.no_time:
        C = 100000
        t,m = res[C]['time'],res[C]['mem']
        print(f"targets at C={C}: time {t['ours']/t['linear_ce']:.2f}× Linear+CE (≤ 1.25)" + (f", peak memory {m['ours']/m['linear_ce']:.2f}× (≤ 1.5)" if m else ""))
        if 'pml' in names: print("faster than pml's ArcFaceLoss at every C: " + ("yes" if all(r['time']['ours'] < r['time']['pml'] for r in res.values()) else "NO"))
    return res

if __name__ == '__main__': main()
