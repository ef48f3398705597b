"""Load on the recognition service (`cosine-serve`): identify throughput and latency with 1, 4, 16 and 64 concurrent clients over HTTP on
127.0.0.1, micro-batching on and off, beside the in-process ceiling (`OnnxEmbedder` + `Gallery.identify` on the same images, in the same
batches); and enrolments interleaved with identification, every acknowledged one then looked up (lost: must be 0).

    OMP_NUM_THREADS=1 python benchmarks/service_load.py          # 1,000 enrolled images of 200 identities, 112 × 112, 10 s a row
    OMP_NUM_THREADS=1 python benchmarks/service_load.py --quick  # 2 s a row, 1 and 16 clients

Columns: img/s, the service's identified images a second; ceiling, the in-process img/s measured just before the row (the machine is
shared: its load drifts), ×ceil their ratio; p50/p95/p99, latency as a client sees it; wrong, answers other than the in-process ones;
CPU ms/img, the service process's CPU time an image (in-process rows: the process's); ×CPU, in-process CPU an image ÷ the service's,
the throughput ratio were the cores theirs alone; client CPU, the load generator's own ms an image, taken from the same cores.
"""
import argparse, asyncio, hashlib, io, os, shutil, signal, socket, subprocess, tempfile, time
from pathlib import Path
import numpy as np
from PIL import Image

def faces(n_ids, per_id, seed=0, size=112, offset=0):
    "JPEG bytes of `per_id` views of `n_ids` synthetic identities: each a smooth colour pattern of its own, each view shifted and noisy"
    rng,out,labels = np.random.default_rng(seed),[],[]
    for i in range(offset, offset + n_ids):
        seed = np.random.default_rng(10_000 + i).integers(0, 256, (7, 7, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(seed).resize((size + 16, size + 16), Image.BICUBIC), np.float32)
        for _ in range(per_id):
            dx,dy = rng.integers(0, 16, 2)
            a = np.clip(base[dy:dy+size, dx:dx+size] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO(); Image.fromarray(a).save(buf, 'JPEG', quality=90)
            out.append(buf.getvalue()); labels.append(f'person {i:04d}')
    return out,labels

def make_model(path, arch='resnet18', size=112):
    "A real network exported by `learn.export_onnx` (untrained: its speed, not its accuracy, is measured), reading colour `size` × `size`"
    import torch
    from cosine_losses.data import folder_dls, synthetic_folder
    from cosine_losses.learner import arch_from_name, cosine_learner
    import cosine_losses.learner_gallery  # noqa: F401  (learn.export_onnx)
    torch.manual_seed(0)
    d = Path(path).parent/'tiny_folder'
    synthetic_folder(d, n=4, sizes=(size, size + 1))
    learn = cosine_learner(folder_dls(d, size=size, bs=8), arch_from_name(arch), pretrained=False)
    return learn.export_onnx(path)

def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def cpu_s(pid) -> float:
    "CPU seconds (user + system) a process has used"
    f = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12]))/os.sysconf('SC_CLK_TCK')

class Service:
    "`cosine-serve` in its own process on 127.0.0.1, as deployed: a zip gallery, a key file"
    def __init__(self, model, gallery, keys, batch_wait_ms, threads):
        self.url = f'http://127.0.0.1:{free_port()}'
        cmd = ['cosine-serve', str(model), '--gallery', str(gallery), '--keys', str(keys), '--port', self.url.rsplit(':', 1)[1],
               '--batch-wait-ms', str(batch_wait_ms), '--threads', str(threads)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, 'OMP_NUM_THREADS': str(threads)})
        import httpx
        t0 = time.time()
        while True:
            if self.proc.poll() is not None: raise RuntimeError(f"cosine-serve exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + '/health', timeout=1).status_code == 200: break
            except httpx.HTTPError: pass
            if time.time() - t0 > 120: raise TimeoutError('cosine-serve did not answer /health in 120 s')
            time.sleep(.2)
    def stop(self):
        self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try: self.proc.wait(30)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()

async def drive(url, key, clients, duration, probes, expected, per_request=1, enrols=None, threshold=.5):
    "`clients` concurrent clients, each sending its next request as its last one is answered, for `duration` s: the row's figures"
    import httpx
    lat,errors,mismatch,acked,it,sent,en = [],[],0,[],[0],[0],iter(enrols or [])
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers={'X-API-Key': key}, timeout=60, limits=limits) as c:
        async def one(w):
            nonlocal mismatch
            while time.perf_counter() < end:
                sent[0] += 1
                if enrols is not None and sent[0] % 10 == 0 and (e := next(en, None)) is not None:  # one request in ten an enrolment
                    ident,k,data = e
                    try:
                        r = await c.post('/enrol', data={'identity': ident, 'keys': [k]}, files=[('files', (f'{k}.jpg', data, 'image/jpeg'))])
                        if r.status_code == 200 and r.json()['keys'] == [k]: acked.append((ident, k))
                        else: errors.append(f'enrol {r.status_code} {r.text[:200]}')
                    except httpx.HTTPError as x: errors.append(f'enrol {type(x).__name__}')
                    continue
                i = it[0]; it[0] += per_request
                idx = [(i + j) % len(probes) for j in range(per_request)]
                t0 = time.perf_counter()
                try:
                    r = await c.post('/identify', data={'threshold': str(threshold), 'k': '1'},
                                     files=[('files', (f'{j}.jpg', probes[j], 'image/jpeg')) for j in idx])
                except httpx.HTTPError as x: errors.append(f'identify {type(x).__name__}'); continue
                if r.status_code != 200: errors.append(f'identify {r.status_code} {r.text[:200]}'); continue
                lat.append(time.perf_counter() - t0)
                mismatch += sum(expected[j] is not None and o['top'][0]['identity'] != expected[j] for o,j in zip(r.json()['results'], idx))
        t0,c0 = time.perf_counter(),time.process_time()
        end = t0 + duration
        await asyncio.gather(*(one(w) for w in range(clients)))
        wall,client_cpu = time.perf_counter() - t0,time.process_time() - c0
    return dict(wall=wall, lat=np.array(lat), errors=errors, mismatch=mismatch, acked=acked, client_cpu=client_cpu)

def ceiling(emb, gallery, probes, bs, duration, threshold=.5):
    "In process, one call after another: decode the same JPEG bytes, `OnnxEmbedder`, `Gallery.identify`, `bs` images a call, for `duration` s"
    lat,i = [],0
    t0,c0 = time.perf_counter(),time.process_time()
    while time.perf_counter() - t0 < duration:
        t = time.perf_counter()
        ims = [Image.open(io.BytesIO(probes[(i + j) % len(probes)])) for j in range(bs)]
        gallery.identify(emb(ims, bs, progress=False), threshold)
        lat.append(time.perf_counter() - t); i += bs
    return dict(wall=time.perf_counter() - t0, lat=np.array(lat), images=i, cpu=time.process_time() - c0)

def ms(a, q): return f'{1e3*np.percentile(a, q):8.1f}' if len(a) else '       -'

def main(duration=10., clients=(1, 4, 16, 64), per_request=1, threads=1, arch='resnet18', n_ids=200, per_id=5, mixed=16):
    import httpx
    from cosine_losses.recognition.embedder import OnnxEmbedder
    from cosine_losses.recognition.gallery import Gallery
    from cosine_losses.recognition.keys import KeyStore
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        model = make_model(d/'model.onnx', arch)
        enrol,labels = faces(n_ids, per_id, seed=0)
        probes = faces(n_ids, 2, seed=1)[0] + faces(n_ids//2, 1, seed=2, offset=5000)[0]  # new views of the enrolled, and strangers
        news = faces(2000, 1, seed=3, offset=10_000)[0]  # enrolled while identification goes on
        emb = OnnxEmbedder(model, threads)
        pil = lambda bs: [Image.open(io.BytesIO(b)) for b in bs]
        g = Gallery().add(emb(pil(enrol), progress=False), labels, emb.fingerprint, emb.name,
                          keys=[hashlib.sha256(b).hexdigest() for b in enrol])  # the service's default keys
        g.save(d/'base.zip')
        s,l = g.search(emb(pil(probes), progress=False), 2)
        # the service's answer must be the in-process one, where the best two identities are not within rounding of each other
        expected = [a if s0 - s1 > 1e-3 else None for a,s0,s1 in zip(l[:,0], s[:,0], s[:,1])]
        key = KeyStore(d/'keys.json').add('load', 'write')
        print(f"{len(enrol)} enrolled images of {n_ids} identities, {len(probes)} probes (a third strangers), JPEG 112×112; {arch} "
              f"(untrained, {emb.fingerprint}); onnxruntime {threads} thread(s); {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
        hdr = (f"{'what':34s} {'clients':>7s} {'req/s':>7s} {'img/s':>7s} {'ceiling':>7s} {'×ceil':>6s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} "
               f"{'errors':>6s} {'wrong':>5s} {'CPU ms/img':>10s} {'×CPU':>5s} {'client CPU':>10s} {'load':>5s}")
        print(hdr); print('-'*len(hdr))
        ceil = {}
        for bs in dict.fromkeys((per_request, 16, 64)):
            c = ceiling(emb, g, probes, bs, duration)
            ceil[bs] = c['images']/c['wall']
            print(f"{f'in-process, {bs} image(s) a call':34s} {'-':>7s} {len(c['lat'])/c['wall']:7.1f} {ceil[bs]:7.1f} {ceil[per_request]:7.1f} "
                  f"{ceil[bs]/ceil[per_request]:6.2f} {ms(c['lat'], 50)} {ms(c['lat'], 95)} {ms(c['lat'], 99)} {'':6s} {'':5s} "
                  f"{1e3*c['cpu']/c['images']:10.1f} {'':5s} {'':10s} {os.getloadavg()[0]:5.1f}")
        lost = {}
        for mode,wait in (('on', 2.), ('off', 0.)):
            shutil.copy(d/'base.zip', d/f'{mode}.zip')
            svc = Service(model, d/f'{mode}.zip', d/'keys.json', wait, threads)
            try:
                asyncio.run(drive(svc.url, key, 16, min(2., duration), probes, expected, per_request))  # warm up
                rows = [(n, None) for n in clients] + [(mixed, [(f'load {mode} {j}', f'k-{mode}-{j}', b) for j,b in enumerate(news)])]*bool(mixed)
                for n,enrols in rows:
                    near = ceiling(emb, g, probes, per_request, duration/2)  # just before: the machine is shared, its load drifts
                    near,near_cpu = near['images']/near['wall'],near['cpu']/near['images']
                    c0 = cpu_s(svc.proc.pid)
                    r = asyncio.run(drive(svc.url, key, n, duration, probes, expected, per_request, enrols))
                    srv,nr = cpu_s(svc.proc.pid) - c0,len(r['lat'])
                    what = f"service, batching {mode}" + (f", +{len(r['acked'])} enrols" if enrols else '')
                    print(f"{what:34s} {n:7d} {nr/r['wall']:7.1f} {nr*per_request/r['wall']:7.1f} {near:7.1f} {nr*per_request/r['wall']/near:6.2f} "
                          f"{ms(r['lat'], 50)} {ms(r['lat'], 95)} {ms(r['lat'], 99)} {len(r['errors']):6d} {r['mismatch']:5d} "
                          f"{1e3*srv/max(nr*per_request, 1):10.1f} {near_cpu*nr*per_request/max(srv, 1e-9):5.2f} "
                          f"{1e3*r['client_cpu']/max(nr*per_request, 1):10.1f} {os.getloadavg()[0]:5.1f}", flush=True)
                    for e in sorted(set(r['errors']))[:5]: print('   ', e)
                    if enrols:  # every acknowledged enrolment, read back through the API at once
                        have = httpx.get(svc.url + '/identities', headers={'X-API-Key': key}).json()['identities']
                        have = {o['identity']: o['images'] for o in have}
                        lost[mode] = [r['acked'], sum(have.get(i) != 1 for i,_ in r['acked'])]
            finally: svc.stop()
            if mode in lost:  # and in the zip the service saved, after it stopped
                acked = lost[mode][0]
                lost[mode].append(len(acked) - Gallery.load(d/f'{mode}.zip').discard([k for _,k in acked]))
        for mode,(acked,api,disk) in lost.items():
            print(f"enrolments while identifying (batching {mode}, {mixed} clients): {len(acked)} acknowledged, lost: {api} (API), {disk} (saved zip)")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--duration', type=float, default=10., help='seconds a row')
    p.add_argument('--clients', type=int, nargs='+', help='concurrent clients of each row (default 1 4 16 64; --quick: 1 16)')
    p.add_argument('--per-request', type=int, default=1, help='images a request')
    p.add_argument('--threads', type=int, default=1, help="onnxruntime's threads, in the service and in process")
    p.add_argument('--arch', default='resnet18')
    p.add_argument('--quick', action='store_true', help='2 s a row, 1 and 16 clients')
    a = p.parse_args()
    if a.quick: a.duration = 2.
    a.clients = a.clients or ([1, 16] if a.quick else [1, 4, 16, 64])
    main(a.duration, a.clients, a.per_request, a.threads, a.arch)
