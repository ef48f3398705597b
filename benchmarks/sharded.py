"""Sharded class centres against one `ArcFaceHead`: peak memory per process and time per step of head + loss.

    OMP_NUM_THREADS=1 python benchmarks/sharded.py [--classes 100000 1000000] [--bs 128] [--steps 3]

A step is forward, backward and an SGD update of the centres for a global batch of `bs` random 128-d features (the body is left
out: it is the same on every side). `one ArcFaceHead` is `ArcFaceHead` + `CombinedMarginLoss` in one plain process; `sharded, W`
is `sharded_margin_loss` on `W` gloo processes (`torchrun --nproc_per_node W`), each holding C/W centres and bs/W features.
Memory is the peak resident size of each process above what it held before the centres were made."""
import argparse, os, resource, subprocess, sys, time

def rss_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024

def worker(mode, C, bs, steps, d=128):
    import torch, torch.distributed as dist, warnings
    warnings.simplefilter('ignore')
    from cosine_losses.losses import CombinedMarginLoss
    from cosine_losses.heads import ArcFaceHead
    from cosine_losses.distributed import ShardedArcFaceHead, sharded_margin_loss
    torch.set_num_threads(1)
    if mode == 'sharded': dist.init_process_group('gloo')
    r,w = (dist.get_rank(),dist.get_world_size()) if mode == 'sharded' else (0,1)
    g = torch.Generator().manual_seed(r)
    x,y = torch.randn(bs//w, d, generator=g),torch.randint(0, C, (bs//w,), generator=g)
    base = rss_mb()
    head = ShardedArcFaceHead(d, C, r, w) if mode == 'sharded' else ArcFaceHead(d, C)
    loss_func = CombinedMarginLoss(s=64., m2=.5)
    opt = torch.optim.SGD(head.parameters(), lr=.1)
    times = []
    for i in range(steps+1):
        t0 = time.perf_counter()
        xi = x.clone().requires_grad_()
        loss = sharded_margin_loss(xi, y, head.weight, s=64., m2=.5) if mode == 'sharded' else loss_func(head(xi), y)
        loss.backward()
        opt.step(); opt.zero_grad()
        if mode == 'sharded': dist.barrier()
        times.append(time.perf_counter() - t0)
    print(f'RESULT {mode} {w} {C} {r} {rss_mb()-base:.0f} {sum(times[1:])/steps:.3f}', flush=True)  # the first step warms up

def run(cmd, env):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode: sys.exit(p.stdout[-2000:] + p.stderr[-3000:])
    return [l.split()[1:] for l in p.stdout.splitlines() if l.startswith('RESULT')]

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--classes', type=int, nargs='+', default=[100_000, 1_000_000])
    ap.add_argument('--bs', type=int, default=128)
    ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--worker', nargs=2)  # internal: mode C
    a = ap.parse_args()
    if a.worker: worker(a.worker[0], int(a.worker[1]), a.bs, a.steps); sys.exit()
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    me = [os.path.abspath(__file__), '--bs', str(a.bs), '--steps', str(a.steps), '--worker']
    print(f'| C | setting | processes | peak memory per process (MB) | s / step |\n|---|---|---|---|---|')
    for C in a.classes:
        rows = run([sys.executable, *me, 'plain', str(C)], env)
        for w in (1, 2): rows += run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(w), *me, 'sharded', str(C)], env)
        for mode,w in (('plain', '1'), ('sharded', '1'), ('sharded', '2')):
            rs = [r for r in rows if r[0] == mode and r[1] == w]
            name = 'one ArcFaceHead' if mode == 'plain' else 'sharded'
            print(f"| {C:,} | {name} | {w} | {' / '.join(r[4] for r in sorted(rs, key=lambda r: r[3]))} | {max(float(r[5]) for r in rs):.3f} |", flush=True)
