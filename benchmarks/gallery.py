"""`Gallery` against faiss called directly: enrol and identify time, memory, and the approximate index's recall and speed-up.

    python benchmarks/gallery.py                      # all parts; 1 thread
    python benchmarks/gallery.py --parts approx --index IVF1024,SQ8 --nprobe 16 64   # parts: speed | memory | approx

Embeddings are clustered like a trained model's: `n/10` identities of 10 unit vectors each, d = 128, each a centre plus noise
(cosine to its centre ≈ 0.8); probes are new noisy views of enrolled identities. `speed`: enrol 10⁵ and identify 10⁴ probes with
`Gallery` and with the same faiss index used directly (add, search, labels looked up), interleaved, median of `--repeats`; the ratio
is Gallery / faiss. `memory`: the resident memory an index of 10⁶ × 128 takes (VmRSS after − before building it, each kind in a fresh
process). `approx`: recall@1 of the approximate index against exact search (the same best image, and the same label) and the query
speed-up, on 10⁶ enrolled and `--queries` probes, for each `--nprobe`."""
import argparse, os, subprocess, sys, time, json

def rss_mb():
    with open('/proc/self/status') as f: return next(int(l.split()[1]) for l in f if l.startswith('VmRSS'))/1024

def data(n, q, d=128, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    ids = n//10
    centres = rng.standard_normal((ids, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    def views(lab):
        x = centres[lab] + .045*rng.standard_normal((len(lab), d), dtype=np.float32)
        return x/np.linalg.norm(x, axis=1, keepdims=True)
    lab = np.arange(n) % ids
    return views(lab),lab,views(rng.integers(0, ids, q))

def speed(n, q, repeats):
    import numpy as np, faiss
    from cosine_losses.recognition.gallery import Gallery
    x,lab,p = data(n, q)
    names = [f'id{i}' for i in range(n//10)]
    labels = [names[i] for i in lab]
    def ours():
        g = Gallery(threshold=.5).add(x, labels)
        return g.identify(p)
    def raw():
        idx = faiss.IndexFlatIP(x.shape[1]); idx.add(x)
        s,i = idx.search(p, 1)
        return [labels[j] if v >= .5 else None for j,v in zip(i[:, 0], s[:, 0])],s[:, 0]
    assert ours()[0] == raw()[0]
    t = {'Gallery': [], 'faiss': []}
    for r in range(repeats):
        for name,f in (('Gallery', ours), ('faiss', raw))[::1 if r % 2 == 0 else -1]:
            t0 = time.perf_counter(); f(); t[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k,v in t.items()}
    print(f"enrol {n:,} (d=128) + identify {q:,}: Gallery {med['Gallery']:.2f} s, faiss {med['faiss']:.2f} s, "
          f"ratio {med['Gallery']/med['faiss']:.3f} (median of {repeats})")

def memory_worker(kind, n):
    import numpy as np, faiss, gc
    from cosine_losses.recognition.gallery import Gallery
    x,lab,_ = data(n, 1)
    gc.collect(); before = rss_mb()
    g = Gallery(kind).add(x, lab.tolist())
    after = rss_mb()
    print(json.dumps(dict(kind=kind, mb=after - before, vectors_mb=x.nbytes/2**20)))

def memory(n, kinds):
    for k in kinds:
        out = subprocess.run([sys.executable, __file__, '--worker', k, '--n', str(n)], capture_output=True, text=True, env=os.environ)
        if out.returncode: print(out.stderr[-2000:]); continue
        r = json.loads(out.stdout.splitlines()[-1])
        print(f"memory of {n:,} × 128 in {r['kind']!r}: {r['mb']:.0f} MiB (the vectors alone {r['vectors_mb']:.0f} MiB)")

def approx(n, q, kind, settings):
    import numpy as np, faiss
    from cosine_losses.recognition.gallery import Gallery
    x,lab,p = data(n, q)
    ex = Gallery().add(x, lab.tolist())
    t0 = time.perf_counter(); ap = Gallery(kind).add(x, lab.tolist()); t_build = time.perf_counter() - t0
    ex._index.search(p[:10], 1)
    t0 = time.perf_counter(); _,ie = ex._index.search(p, 1); t_ex = time.perf_counter() - t0
    le = ex.codes[ie[:, 0]]
    print(f"{kind} at {n:,} (built in {t_build:.0f} s), {q:,} queries, exact search {t_ex:.2f} s:")
    for params in settings:
        for k,v in params.items(): faiss.ParameterSpace().set_index_parameter(ap._index, k, v)
        t0 = time.perf_counter(); _,ia = ap._index.search(p, 1); t_ap = time.perf_counter() - t0
        print(f"  {params}: recall@1 of exact (the same best image) {(ia[:, 0] == ie[:, 0]).mean():.4f}, "
              f"the same label {(ap.codes[ia[:, 0]] == le).mean():.4f}; {t_ap:.2f} s, speed-up {t_ex/t_ap:.1f}×")

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--parts', nargs='+', default=['speed', 'memory', 'approx'])
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--queries', type=int, default=2000)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--index', default='IVF1024,Flat')
    ap.add_argument('--nprobe', type=int, nargs='+', default=[16, 64])
    ap.add_argument('--worker'); ap.add_argument('--n', type=int, default=10**6)
    a = ap.parse_args()
    os.environ['OMP_NUM_THREADS'] = str(a.threads)
    import faiss, warnings; warnings.simplefilter('ignore'); faiss.omp_set_num_threads(a.threads)
    if a.worker: memory_worker(a.worker, a.n); sys.exit()
    if 'speed' in a.parts: speed(10**5, 10**4, a.repeats)
    if 'memory' in a.parts: memory(10**6, ['Flat', a.index, 'IVF1024,SQ8'])
    if 'approx' in a.parts: approx(10**6, a.queries, a.index, [dict(nprobe=k) for k in a.nprobe])
