"""`MilvusGallery` (Milvus Lite on this machine, or a Milvus server) beside the in-memory faiss `Gallery`, at 10⁶ enrolled × 128.

    python benchmarks/milvus_gallery.py                                  # 10⁶ enrolled, 10⁴ probes; Gallery, then FLAT, HNSW, IVF_FLAT
    python benchmarks/milvus_gallery.py --n 100000 --probes 2000 --kinds gallery FLAT    # a quick look
    python benchmarks/milvus_gallery.py --server --n 100000 --probes 2000 --kinds FLAT --consistency Strong Bounded

Embeddings are clustered like a trained model's, as in `gallery.py`: `n/10` identities of 10 unit vectors, d = 128 (two images of one
identity at cosine ≈ 0.8); probes are new views of enrolled identities. Each backend runs in a fresh process (its memory its own:
Milvus Lite serves from inside the client's process) and reports: enrol throughput (images/s, `add` of the whole array: checks,
content keys, upserts), identify throughput (probes/s, `identify` at a fixed threshold: the best class of each probe), the agreement
of identified labels with the exact `Gallery`'s, peak resident memory (VmHWM) and the gallery's size on disk. One CSV row a backend.

`--server` runs the Milvus backends on a Milvus standalone server (PyPI's `milvus` wheel, started here on loopback at its default
settings, as `tests/milvus_server.py` does) instead of Milvus Lite, at each read `--consistency`; its rows add what a service sees:
`one_ms`, the median latency of `identify` of one probe (40 calls), and `fresh`, whether 10 images just added are at once counted
and identified (what a `Strong` read guarantees and a `Bounded` one, Milvus's default, does not)."""
import argparse, csv, json, os, subprocess, sys, tempfile, time
from pathlib import Path

KINDS = {'FLAT': (None, None), 'HNSW': ({'M': 16, 'efConstruction': 100}, {'ef': 64}), 'IVF_FLAT': ({'nlist': 1024}, {'nprobe': 32})}

def status_mb(key, pid='self'):
    with open(f'/proc/{pid}/status') as f: return next(int(l.split()[1]) for l in f if l.startswith(key))/1024

def data(n, q, d=128, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n//10, d), dtype=np.float32); centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    def views(lab):
        x = centres[lab] + .045*rng.standard_normal((len(lab), d), dtype=np.float32)
        return x/np.linalg.norm(x, axis=1, keepdims=True)
    lab = np.arange(n) % (n//10)
    return views(lab),lab,views(rng.integers(0, n//10, q))

def one(kind, n, q, tmp, uri=None, consistency='Strong'):
    "Run one backend in this process; print its figures as JSON"
    import numpy as np
    x,lab,p = data(n, q)
    labels,rss0,extra = [f'id{i}' for i in lab],status_mb('VmRSS'),{}
    if kind == 'gallery':
        from cosine_losses.recognition.gallery import Gallery
        g = Gallery(threshold=.5)
    else:
        from cosine_losses.recognition.milvus import MilvusGallery
        where = uri or Path(tmp)/f'{kind}.db',f'bench_{kind}_{consistency}'
        if uri: MilvusGallery(*where).drop()  # a server's collection of an earlier run
        g = MilvusGallery(*where, index=kind, params=KINDS[kind][0], search_params=KINDS[kind][1], threshold=.5, batch=5000,
                          consistency=consistency)
    t = time.perf_counter(); g.add(x, labels); enrol = time.perf_counter() - t
    if kind != 'gallery': g.client.flush(g.collection)  # sealed and indexed before the clock starts for queries
    t = time.perf_counter(); ids,_ = g.identify(p); ident = time.perf_counter() - t
    out = Path(tmp)/f'{kind}_{consistency}.json'
    json.dump(ids, open(out.with_suffix('.labels'), 'w'))
    rows = len(g)
    if uri:
        ms = []
        for i in range(40): t = time.perf_counter(); g.identify(p[i:i+1]); ms.append(1000*(time.perf_counter() - t))
        new = p[:10]/2 + x[:10]/2; new /= np.linalg.norm(new, axis=1, keepdims=True)  # 10 new images, each nearest to itself
        g.add(new, ['fresh']*10)
        extra = dict(one_ms=round(float(np.median(ms)), 1), fresh=len(g) == n + 10 and g.identify(new, threshold=.999)[0] == ['fresh']*10)
        disk = None
    elif kind == 'gallery': disk = g.save(Path(tmp)/'gallery.zip').stat().st_size/2**20
    else: disk = sum(f.stat().st_size for f in (Path(tmp)/f'{kind}.db').rglob('*') if f.is_file())/2**20
    print(json.dumps(dict(kind=kind, n=n, probes=q, enrol_s=round(enrol, 1), enrol_per_s=round(n/enrol), identify_s=round(ident, 1),
                          identify_per_s=round(q/ident, 1), rss_growth_mib=round(status_mb('VmRSS') - rss0), peak_rss_mib=round(status_mb('VmHWM')),
                          disk_mib=disk and round(disk), len=rows, **extra)))
    if uri: g.drop()

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=1_000_000); ap.add_argument('--probes', type=int, default=10_000)
    ap.add_argument('--kinds', nargs='+', default=['gallery', 'FLAT', 'HNSW', 'IVF_FLAT'])
    ap.add_argument('--server', action='store_true', help='Milvus backends on a Milvus server started here, not Milvus Lite')
    ap.add_argument('--consistency', nargs='+', default=['Strong'], help="with --server: the reads' consistency levels to compare")
    ap.add_argument('--out', default=None); ap.add_argument('--one', help=argparse.SUPPRESS)
    ap.add_argument('--tmp', help=argparse.SUPPRESS); ap.add_argument('--uri', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one: one(a.one, a.n, a.probes, a.tmp, a.uri, a.consistency[0]); sys.exit()
    out = a.out or f"results/milvus/milvus_{'server' if a.server else 'gallery'}.csv"
    tmp,rows,server = tempfile.mkdtemp(),[],None
    if a.server:
        sys.path.insert(0, str(Path(__file__).parents[1]/'tests'))
        from milvus_server import MilvusServer
        t = time.perf_counter(); server = MilvusServer(Path(tmp)/'server'); uri = server.start()
        print(f"Milvus server at {uri}, started in {time.perf_counter() - t:.1f} s", flush=True)
    kinds = ['gallery'] + [k for k in a.kinds if k != 'gallery']  # the exact labels first: the others are compared with them
    print(f"{a.n:,} enrolled × 128, {a.probes:,} probes; load average {os.getloadavg()[0]:.1f}", flush=True)
    try:
        for k in kinds:
            for c in (['Strong'] if k == 'gallery' or not a.server else a.consistency):
                r = subprocess.run([sys.executable, __file__, '--one', k, '--n', str(a.n), '--probes', str(a.probes), '--tmp', tmp,
                                    '--consistency', c] + (['--uri', uri] if server and k != 'gallery' else []), capture_output=True, text=True)
                if r.returncode: print(r.stderr[-3000:], file=sys.stderr); continue
                row = dict(backend='gallery' if k == 'gallery' else 'server' if server else 'lite',
                           consistency=None if k == 'gallery' else c,
                           **json.loads(r.stdout.strip().splitlines()[-1]))
                exact,got = json.load(open(Path(tmp)/'gallery_Strong.labels')),json.load(open(Path(tmp)/f'{k}_{c}.labels'))
                row['agreement'] = round(sum(a == b for a,b in zip(exact, got))/len(exact), 4)
                if server and k != 'gallery': row['server_peak_rss_mib'] = round(status_mb('VmHWM', server.pid))
                rows.append(row); print(row, flush=True)
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                with open(out, 'w', newline='') as f:
                    w = csv.DictWriter(f, list(dict.fromkeys(k for r in rows for k in r))); w.writeheader(); w.writerows(rows)
    finally:
        if server: server.stop()
    print(f"\nwrote {out}; load average {os.getloadavg()[0]:.1f}")
