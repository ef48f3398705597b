"""`MilvusGallery` (Milvus Lite, on this machine) beside the in-memory faiss `Gallery`, at 10⁶ enrolled × 128.

    python benchmarks/milvus_gallery.py                                  # 10⁶ enrolled, 10⁴ probes; Gallery, then FLAT, HNSW, IVF_FLAT
    python benchmarks/milvus_gallery.py --n 100000 --probes 2000 --kinds gallery FLAT    # a quick look

Embeddings are clustered like a trained model's, as in `gallery.py`: `n/10` identities of 10 unit vectors, d = 128 (two images of one
identity at cosine ≈ 0.8); probes are new views of enrolled identities. Each backend runs in a fresh process (its memory its own:
Milvus Lite serves from inside the client's process) and reports: enrol throughput (images/s, `add` of the whole array: checks,
content keys, upserts), identify throughput (probes/s, `identify` at a fixed threshold: the best class of each probe), the agreement
of identified labels with the exact `Gallery`'s, peak resident memory (VmHWM) and the gallery's size on disk. One CSV row a backend."""
import argparse, csv, json, os, subprocess, sys, tempfile, time
from pathlib import Path

KINDS = {'FLAT': (None, None), 'HNSW': ({'M': 16, 'efConstruction': 100}, {'ef': 64}), 'IVF_FLAT': ({'nlist': 1024}, {'nprobe': 32})}

def status_mb(key):
    with open('/proc/self/status') as f: return next(int(l.split()[1]) for l in f if l.startswith(key))/1024

def data(n, q, d=128, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n//10, d), dtype=np.float32); centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    def views(lab):
        x = centres[lab] + .045*rng.standard_normal((len(lab), d), dtype=np.float32)
        return x/np.linalg.norm(x, axis=1, keepdims=True)
    lab = np.arange(n) % (n//10)
    return views(lab),lab,views(rng.integers(0, n//10, q))

def one(kind, n, q, tmp):
    "Run one backend in this process; print its figures as JSON"
    import numpy as np
    x,lab,p = data(n, q)
    labels,rss0 = [f'id{i}' for i in lab],status_mb('VmRSS')
    if kind == 'gallery':
        from cosine_losses.recognition.gallery import Gallery
        g = Gallery(threshold=.5)
    else:
        from cosine_losses.recognition.milvus import MilvusGallery
        g = MilvusGallery(Path(tmp)/f'{kind}.db', index=kind, params=KINDS[kind][0], search_params=KINDS[kind][1], threshold=.5, batch=5000)
    t = time.perf_counter(); g.add(x, labels); enrol = time.perf_counter() - t
    if kind != 'gallery': g.client.flush(g.collection)  # sealed and indexed before the clock starts for queries
    t = time.perf_counter(); ids,_ = g.identify(p); ident = time.perf_counter() - t
    out = Path(tmp)/f'{kind}.json'
    json.dump(ids, open(out.with_suffix('.labels'), 'w'))
    if kind == 'gallery': disk = g.save(Path(tmp)/'gallery.zip').stat().st_size/2**20
    else: disk = sum(f.stat().st_size for f in (Path(tmp)/f'{kind}.db').rglob('*') if f.is_file())/2**20
    print(json.dumps(dict(kind=kind, n=n, probes=q, enrol_s=round(enrol, 1), enrol_per_s=round(n/enrol), identify_s=round(ident, 1),
                          identify_per_s=round(q/ident, 1), rss_growth_mib=round(status_mb('VmRSS') - rss0), peak_rss_mib=round(status_mb('VmHWM')),
                          disk_mib=round(disk), len=len(g))))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=1_000_000); ap.add_argument('--probes', type=int, default=10_000)
    ap.add_argument('--kinds', nargs='+', default=['gallery', 'FLAT', 'HNSW', 'IVF_FLAT'])
    ap.add_argument('--out', default='results/milvus/milvus_gallery.csv'); ap.add_argument('--one', help=argparse.SUPPRESS)
    ap.add_argument('--tmp', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one: one(a.one, a.n, a.probes, a.tmp); sys.exit()
    tmp,rows = tempfile.mkdtemp(),[]
    kinds = ['gallery'] + [k for k in a.kinds if k != 'gallery']  # the exact labels first: the others are compared with them
    print(f"{a.n:,} enrolled × 128, {a.probes:,} probes; load average {os.getloadavg()[0]:.1f}", flush=True)
    for k in kinds:
        r = subprocess.run([sys.executable, __file__, '--one', k, '--n', str(a.n), '--probes', str(a.probes), '--tmp', tmp],
                           capture_output=True, text=True)
        if r.returncode: print(r.stderr[-3000:], file=sys.stderr); continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        exact,got = json.load(open(Path(tmp)/'gallery.labels')),json.load(open(Path(tmp)/f'{k}.labels'))
        row['agreement'] = round(sum(a == b for a,b in zip(exact, got))/len(exact), 4)
        rows.append(row); print(row, flush=True)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, 'w', newline='') as f: w = csv.DictWriter(f, list(rows[0])); w.writeheader(); w.writerows(rows)
    print(f"\nwrote {a.out}; load average {os.getloadavg()[0]:.1f}")
