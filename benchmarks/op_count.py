"""Operators per training step of head + loss, forward and backward, counted with `torch.profiler` on the CPU.

On a GPU every operator that computes launches at least one kernel, and a step as small as ours (N=256) costs
launches, not arithmetic; a value read back to the host (`.item()`, `if tensor.any()`) stalls the GPU until its
queue drains. Both can be counted on the CPU, where the same Python code runs the same operators:

- `ops`: the innermost `aten::` operators that do work, the ones that would be kernels on a GPU; views, reshapes,
  empty allocations and no-op conversions are not counted, nor two CPU-only helpers (a Python scalar turned into a
  0-dim tensor, the initial fill of a reduction's output);
- `fwd` / `bwd`: the same, split into the forward (`loss(head(x), y)`) and `loss.backward()`;
- `syncs`: `aten::_local_scalar_dense`, the copy of one value to the host (`.item()`, `bool(tensor)`): on a GPU the
  host waits there for the device's queue to drain.

    python benchmarks/op_count.py 2>/dev/null       # every margin option, N=256, d=512, C=1000 (stderr: the profiler's log)
    python benchmarks/op_count.py --bf16 --list ours # the forward under bf16 autocast; the operators of one row, in order
    python benchmarks/op_count.py --compiled --rows linear_ce ours sphereface  # under torch.compile: generated kernels + matmuls
"""
from __future__ import annotations
import argparse, contextlib
from functools import partial
import torch, torch.nn as nn
from torch.profiler import profile, record_function, ProfilerActivity

# operators that compute nothing: views, metadata, allocation, and conversions that are no-ops when nothing runs below them
FREE = {'view', '_unsafe_view', 'as_strided', 'select', 'slice', 'expand', 'expand_as', 'unsqueeze', 'squeeze', 't',
        'transpose', 'permute', 'detach', 'detach_', 'alias', 'empty', 'empty_like', 'empty_strided', 'resize_',
        '_reshape_alias', 'reshape', 'view_as', 'lift_fresh', 'narrow', 'split', 'unbind', 'to', 'contiguous',
        'type_as', 'result_type', 'item', 'is_nonzero', 'flatten', 'unflatten', 'chunk', 'set_', 'numel', 'size',
        'stride', 'is_same_size', 'as_strided_', 'dim', 'resolve_conj', 'resolve_neg', 'new_empty', 'new_empty_strided'}
SYNC = 'aten::_local_scalar_dense'

def configs():
    "name: (head factory, loss) for every option of the head and the loss, plus Linear + CE"
    from cosine_losses.heads import ArcFaceHead
    from cosine_losses.losses import CombinedMarginLoss
    try: CombinedMarginLoss(check='device'); L = partial(CombinedMarginLoss, check='device')  # what runs off the CPU
    except TypeError: L = CombinedMarginLoss  # before the `check` switch: host checks everywhere
    res = {'linear_ce': (lambda d,C: nn.Linear(d, C, bias=False), nn.CrossEntropyLoss()),
           'ours': (ArcFaceHead, L(30, 1, .5, 0)),
           'cosface': (ArcFaceHead, L(30, 1, 0, .35)),
           'combined': (ArcFaceHead, L(30, 1, .4, .2)),
           'sphereface': (ArcFaceHead, L(30, 1.35, 0, 0)),
           'easy_margin': (ArcFaceHead, L(30, 1, .5, 0, easy_margin=True)),
           'detach_margin': (ArcFaceHead, L(30, 1, .5, 0, detach_margin=True)),
           'subcentres_k3': (lambda d,C: ArcFaceHead(d, C, k=3), L(30, 1, .5, 0)),
           'per_class_m2': (ArcFaceHead, lambda C: L(30, 1, torch.linspace(.2, .5, C), 0)),
           'ours_host': (ArcFaceHead, CombinedMarginLoss(30, 1, .5, 0)),
           'ours_nocheck': (ArcFaceHead, lambda C: L(30, 1, .5, 0, check=False))}
    return res

def step(head, loss, x, y, ctx=contextlib.nullcontext, fn=None):
    x.grad = None
    for p in head.parameters(): p.grad = None
    with record_function('op_count:forward'), ctx(): l = (fn or (lambda x, y: loss(head(x), y)))(x, y)
    with record_function('op_count:backward'): l.backward()

REDUCTIONS = {'aten::sum', 'aten::amax', 'aten::amin', 'aten::any', 'aten::all', 'aten::mean', 'aten::max', 'aten::min'}

def _cpu_only(ev):
    "CPU helpers a GPU does not launch: a Python scalar made a 0-dim tensor, a reduction's initial fill"
    up = ev.cpu_parent.name if ev.cpu_parent else ''
    return (ev.name in ('aten::to', 'aten::_to_copy') and all(s == [] for s in ev.input_shapes[:1]) or
            ev.name == 'aten::fill_' and up in REDUCTIONS or ev.name == 'aten::scalar_tensor')

def _work(prof):
    "The operators that do work, in order, with the phase they ran in: the innermost non-free `aten::` operators"
    res = []
    def walk(ev, phase):
        if _cpu_only(ev): return
        if ev.name.startswith('op_count:'): phase = ev.name[9:]
        if ev.name == 'aten::_assert_async': res.append((ev.name, phase)); return  # a kernel on a GPU; on a CPU it reads the flag
        if 'cpp_fused' in ev.name: res.append(('inductor: ' + ev.name.split('cpp_fused_')[-1][:60], phase)); return  # one generated kernel
        i = len(res)
        for k in ev.cpu_children: walk(k, phase)
        if len(res) == i and ev.name.startswith('aten::') and ev.name[6:] not in FREE: res.append((ev.name, phase))
    for ev in prof.events():
        if ev.cpu_parent is None: walk(ev, None)
    return res

def count(head, loss, x, y, ctx=contextlib.nullcontext, compiled=False):
    "Counts of one step (after a warm-up step): operators, in the forward, in the backward, host syncs; and their list"
    fn = None
    if compiled:  # inductor's generated kernels, each recorded by the profiler under its name
        import torch._dynamo, torch._inductor.config
        torch._dynamo.reset()
        torch._inductor.config.cpp.enable_kernel_profile = True
        fn = torch.compile(lambda x, y: loss(head(x), y), fullgraph=True, dynamic=False)
    step(head, loss, x, y, ctx, fn)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof: step(head, loss, x, y, ctx, fn)
    ops = _work(prof)
    work = [(n, ph) for n,ph in ops if n != SYNC]
    return dict(ops=len(work), fwd=sum(ph == 'forward' for _,ph in work), bwd=sum(ph == 'backward' for _,ph in work),
                syncs=len(ops) - len(work)), ops

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--N', type=int, default=256); p.add_argument('--d', type=int, default=512); p.add_argument('--C', type=int, default=1000)
    p.add_argument('--bf16', action='store_true', help='forward under bf16 autocast, as `to_autocast()`')
    p.add_argument('--list', metavar='ROW', help='print the operators of this row, in order')
    p.add_argument('--rows', nargs='+', help='only these rows')
    p.add_argument('--compiled', action='store_true', help='count the kernels of the step under torch.compile (inductor, fullgraph)')
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ctx = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if a.bf16 else contextlib.nullcontext
    print(f"torch {torch.__version__}, CPU, N={a.N}, d={a.d}, C={a.C}, {'bf16 autocast' if a.bf16 else 'float32'}{', compiled' if a.compiled else ''}; "
          "one step: head + loss forward, backward into the features and the centres")
    print(f"{'row':<15} {'ops':>5} {'fwd':>5} {'bwd':>5} {'syncs':>6}")
    res = {}
    for nm,(mk,loss) in configs().items():
        if a.rows and nm not in a.rows: continue
        torch.manual_seed(0)
        head = mk(a.d, a.C)
        if not isinstance(loss, nn.Module):
            try: loss = loss(a.C)
            except (TypeError, ValueError): continue  # an option this version of the library lacks
        x,y = torch.randn(a.N, a.d, requires_grad=True),torch.randint(0, a.C, (a.N,))
        c,leaves = count(head, loss, x, y, ctx, a.compiled)
        res[nm] = c
        print(f"{nm:<15} {c['ops']:>5} {c['fwd']:>5} {c['bwd']:>5} {c['syncs']:>6}", flush=True)
        if nm == a.list:
            for i,(n,ph) in enumerate(leaves): print(f"    {i:3d} {ph:<8} {n}" + "   (sync)"*(n == SYNC))
    return res

if __name__ == '__main__': main()
