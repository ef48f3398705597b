"The recognition service over real HTTP: uvicorn on 127.0.0.1, an exported learner's ONNX file, a zip gallery; micro-batching, keys, bad input, a killed server."
import asyncio, io, json, os, random, signal, socket, struct, subprocess, sys, threading, time, zlib
from pathlib import Path
import httpx, numpy as np, pytest, uvicorn
from PIL import Image
from image_folders import WORDS, colour_folder, console_script as _exe
from cosine_losses.recognition.embedder import OnnxEmbedder
from cosine_losses.recognition.gallery import Gallery, image_files
from cosine_losses.recognition.keys import KeyStore
from cosine_losses.recognition.service import make_app

ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}

@pytest.fixture(scope='session')
def onnx_model(tmp_path_factory):
    "An untrained cosine learner's ONNX file (32 × 32 colour), and colour folders of word-named classes to enrol and query"
    from fastai.vision.all import ImageDataLoaders, Resize, set_seed
    from cosine_losses.all import cosine_learner
    d = tmp_path_factory.mktemp('service')
    dls = ImageDataLoaders.from_folder(colour_folder(d/'train', WORDS[:4], 6, 0), valid_pct=.25, seed=0, item_tfms=Resize(32), bs=8)
    set_seed(0)
    cosine_learner(dls, pretrained=False).export_onnx(d/'model.onnx')
    return d/'model.onnx',colour_folder(d/'people', WORDS[:4], 3, 1),colour_folder(d/'queries', WORDS[:6], 4, 2)

def _port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

class Server:
    "A real uvicorn serving `app` on 127.0.0.1 in a thread, for as long as the `with` lasts"
    def __init__(self, app):
        self.port = _port()
        self.server,self.url = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=self.port, log_level='warning')),f'http://127.0.0.1:{self.port}'
    def __enter__(self):
        self.thread = threading.Thread(target=self.server.run, daemon=True); self.thread.start()
        while not self.server.started: time.sleep(.01)
        return self
    def __exit__(self, *exc): self.server.should_exit = True; self.thread.join()

def _files(paths, field='files'): return [(field, (p.name, p.read_bytes())) for p in paths]

def _enrol_all(c, people, headers=None):
    for d in sorted(people.iterdir()):
        r = c.post('/enrol', data={'identity': d.name}, files=_files(sorted(d.iterdir())), headers=headers)
        assert r.status_code == 200, r.text

def test_concurrent_identify_is_one_model_call_and_answers_as_one_by_one(onnx_model, tmp_path):
    model,people,queries = onnx_model
    qs = image_files(queries)
    m = OnnxEmbedder(model)
    ref = Gallery().add(m(image_files(people)), [f.parent.name for f in image_files(people)])
    want_s,want_l = ref.search(m(qs), 2)  # in process, without the service: the reference
    for wait,fewer in ((50, True), (0, False)):
        app = make_app(m, tmp_path/f'g{wait}.gallery', batch_wait_ms=wait)
        with Server(app) as s:
            with httpx.Client(base_url=s.url) as c:
                _enrol_all(c, people)
                calls = app.state.batcher.calls
                one = [c.post('/identify', data={'threshold': '0.5', 'k': '2'}, files=_files([q])).json()['results'][0] for q in qs]
                assert app.state.batcher.calls - calls == len(qs)  # one by one: a call each
            async def together():
                async with httpx.AsyncClient(base_url=s.url) as ac:
                    rs = await asyncio.gather(*[ac.post('/identify', data={'threshold': '0.5', 'k': '2'}, files=_files([q])) for q in qs])
                return [r.json()['results'][0] for r in rs]
            calls = app.state.batcher.calls
            many = asyncio.run(together())
            n = app.state.batcher.calls - calls
        assert (n < len(qs)) if fewer else (n == len(qs)), (wait, n)
        for a,b,ws,wl in zip(one, many, want_s, want_l):
            assert a['identity'] == b['identity'] and [t['identity'] for t in a['top']] == [t['identity'] for t in b['top']] == list(wl)
            np.testing.assert_allclose([t['score'] for t in b['top']], ws, atol=1e-5)
            np.testing.assert_allclose([t['score'] for t in a['top']], ws, atol=1e-5)
            assert a['identity'] == (wl[0] if ws[0] >= .5 else None)

def test_keys_scopes_and_collections(onnx_model, tmp_path):
    model,people,queries = onnx_model
    ks = KeyStore(tmp_path/'keys.json')
    rd,wr,other = ks.add('door', 'read', 'faces'),ks.add('admin', 'write', 'faces'),ks.add('hr', 'write', 'staff')
    img = _files([image_files(people)[0]])
    with Server(make_app(model, tmp_path/'g.gallery', keys=ks, collection='faces')) as s, httpx.Client(base_url=s.url) as c:
        H = lambda k: {'X-API-Key': k}
        assert c.get('/health').json()['auth'] is True and c.get('/').status_code == 200 and c.get('/openapi.json').status_code == 200
        calls = dict(enrol=lambda h: c.post('/enrol', data={'identity': 'ann'}, files=img, headers=h),
                     identify=lambda h: c.post('/identify', data={'threshold': '0.5'}, files=img, headers=h),
                     identities=lambda h: c.get('/identities', headers=h),
                     delete=lambda h: c.delete('/identities', params={'identity': 'nobody'}, headers=h),
                     image=lambda h: c.delete('/images', params={'key': 'nothing'}, headers=h))
        for name,call in calls.items():
            assert call(None).status_code == 401 and call(H(rd + 'x')).status_code == 401 and call(H('nonsense')).status_code == 401, name
            assert call(H(other)).status_code == 403, name  # a write key of another collection
        assert calls['enrol'](H(rd)).status_code == 403 and calls['delete'](H(rd)).status_code == 403 and calls['image'](H(rd)).status_code == 403
        r = calls['identify'](H(rd))
        assert r.status_code == 422 and r.json()['detail'] == 'the gallery is empty: POST /enrol images first', r.text
        assert calls['enrol'](H(wr)).json()['added'] == 1
        assert calls['identify'](H(rd)).json()['results'][0]['identity'] == 'ann'
        assert calls['identities'](H(rd)).json() == {'identities': [{'identity': 'ann', 'images': 1}]}
        assert calls['delete'](H(wr)).status_code == 404 and calls['image'](H(wr)).json() == {'key': 'nothing', 'removed': 0}
        r = calls['enrol'](H(other))
        assert r.json()['detail'] == "key 'hr' opens collection 'staff', not 'faces'" and other not in r.text
        ks.revoke('door')
        assert calls['identities'](H(rd)).status_code == 401  # revoked: refused at the next request

def test_keys_never_in_the_logs(onnx_model, tmp_path):
    "`cosine-keys` makes the keys; `cosine-serve` (a real process, uvicorn's own logging) logs the requests, never a key"
    model,people,queries = onnx_model
    keys = {}
    for name,scope,coll in (('door', 'read', 'gallery'), ('admin', 'write', 'gallery'), ('hr', 'write', 'staff')):
        r = subprocess.run([_exe('cosine-keys'), 'add', name, '--scope', scope, '--collection', coll, '--keys', str(tmp_path/'k.json')],
                           capture_output=True, text=True, env=ENV, timeout=60)
        assert r.returncode == 0 and 'shown this once' in r.stderr, r.stderr
        keys[name] = r.stdout.strip()
    port = _port()
    p = subprocess.Popen([_exe('cosine-serve'), str(model), '--gallery', str(tmp_path/'g.gallery'), '--keys', str(tmp_path/'k.json'),
                          '--port', str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        url = _wait(f'http://127.0.0.1:{port}', p)
        with httpx.Client(base_url=url) as c:
            img = _files(sorted((people/'apple').iterdir()))
            codes = [c.post('/enrol', data={'identity': 'ann'}, files=img, headers={'X-API-Key': k}).status_code
                     for k in (keys['admin'], keys['door'], keys['hr'], keys['admin'][:-1], '')]
            codes += [c.get('/identities', headers={'X-API-Key': keys['door']}).status_code,
                      c.delete('/identities', params={'identity': 'nobody'}, headers={'X-API-Key': keys['admin']}).status_code]
        assert codes == [200, 403, 403, 401, 401, 200, 404]
    finally:
        p.send_signal(signal.SIGINT); out = p.communicate(timeout=30)[0]
    assert 'POST /enrol' in out and '403' in out and 'DELETE /identities' in out, out  # the requests were logged
    for k in keys.values(): assert k not in out and k.split('.')[1] not in out and k.split('.')[1][:12] not in out

def _wait(url, p, timeout=60):
    t = time.time()
    while time.time() - t < timeout:
        if p.poll() is not None: raise AssertionError(f"the server exited: {p.communicate()[0][-3000:]}")
        try:
            if httpx.get(f'{url}/health').status_code == 200: return url
        except httpx.TransportError: time.sleep(.1)
    raise AssertionError(f"the server did not answer in {timeout} s")

def _png(w, h, rows=None):
    "A one-bit grey PNG of w×h zeros, compressed row by row (its pixels never held); a 30,000² one is ~110 KB"
    chunk = lambda t, b: struct.pack('>I', len(b)) + t + b + struct.pack('>I', zlib.crc32(t + b))
    z,row = zlib.compressobj(9),b'\0'*(1 + (w + 7)//8)
    body = b''.join(z.compress(row) for _ in range(h)) + z.flush()
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 1, 0, 0, 0, 0)) + chunk(b'IDAT', body) + chunk(b'IEND', b'')

def _bad_requests(people, keys):
    "{name: (request arguments, status, words of the detail)}: each to be refused with nothing written"
    good = [(p.name, p.read_bytes()) for p in image_files(people)[:2]]
    noisy = io.BytesIO(); Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noisy, 'PNG')
    W,R,S = ({'X-API-Key': keys[k]} for k in ('admin', 'door', 'hr'))
    enrol = lambda files, data={'identity': 'eve'}, h=W: dict(method='POST', url='/enrol', data=data, files=[('files', f) for f in files], headers=h)
    big = os.urandom(int(.6*2**20))
    return {
        'not an image': (enrol([good[0], ('notes.png', b'these are not pixels')]), 415, 'notes.png is not an image'),
        'truncated': (enrol([('cut.png', noisy.getvalue()[:5000])]), 422, 'cut.png is truncated or corrupt'),
        'bomb 30000²': (enrol([good[0], ('bomb.png', _png(30_000, 30_000))]), 413, 'bomb.png'),
        'over max_pixels': (enrol([('wide.png', _png(4000, 3000))]), 413, 'wide.png is 4000×3000 pixels, more than the 10,000,000'),
        'over max_upload_mb': (enrol([('big.png', big)]), 413, 'over this service\'s limit of 0.5 MB'),
        'too many files': (enrol(good*3), 413, '6 images in one request, more than 4'),
        'no identity': (enrol(good, {}), 422, 'no identity'),
        'empty identity': (enrol(good, {'identity': ' \t'}), 422, 'identity is empty'),
        'identity of 201 characters': (enrol(good, {'identity': 'é'*201}), 422, 'identity has 201 characters, more than 200'),
        'keys not one a file': (enrol(good, {'identity': 'eve', 'keys': ['k1']}), 422, '2 files but 1 keys'),
        'key too long': (enrol(good[:1], {'identity': 'eve', 'keys': ['"'*300]}), 422, 'a key has 300 characters'),
        'no images': (enrol([]), 422, 'no images'),
        'json, no form': (dict(method='POST', url='/enrol', json={'identity': 'eve'}, headers=W), 422, 'no identity'),
        'no key': (enrol(good, h={}), 401, 'no API key'),
        'wrong key': (enrol(good, h={'X-API-Key': keys['admin'][:-2]}), 401, 'an unknown API key'),
        'read key writes': (enrol(good, h=R), 403, 'may only read'),
        'another collection': (enrol(good, h=S), 403, "opens collection 'staff'"),
        'delete unknown': (dict(method='DELETE', url='/identities', params={'identity': 'a" or label != "'}, headers=W), 404, 'is not enrolled'),
        'delete, read key': (dict(method='DELETE', url='/identities', params={'identity': 'apple'}, headers=R), 403, 'may only read'),
        'delete image, read key': (dict(method='DELETE', url='/images', params={'key': 'x'}, headers=R), 403, 'may only read'),
        'delete without identity': (dict(method='DELETE', url='/identities', headers=W), 422, 'identity'),
        'calibrate on an enrolled identity': (dict(method='POST', url='/calibrate', data={'labels': ['apple', 'zed']},
                                                   files=[('files', f) for f in good], headers=W), 422, 'classes not enrolled'),
        'calibrate, labels not one a file': (dict(method='POST', url='/calibrate', data={'labels': ['zed']},
                                                  files=[('files', f) for f in good], headers=W), 422, '2 files but 1 labels'),
        'far not a number': (dict(method='POST', url='/identify', data={'far': 'abc'}, files=[('files', good[0])], headers=R), 422, 'far must be a number'),
        'far over 1': (dict(method='POST', url='/identify', data={'far': '2'}, files=[('files', good[0])], headers=R), 422, 'far must be between'),
        'threshold nan': (dict(method='POST', url='/identify', data={'threshold': 'nan'}, files=[('files', good[0])], headers=R), 422, 'threshold'),
        'k of 0': (dict(method='POST', url='/identify', data={'k': '0'}, files=[('files', good[0])], headers=R), 422, 'k must be between'),
        'far the calibration cannot resolve': (dict(method='POST', url='/identify', data={'far': '1e-6'}, files=[('files', good[0])], headers=R),
                                               422, 'cannot resolve FAR 1e-06'),
        'verify, both': (dict(method='POST', url='/verify', data={'identity': 'apple'}, files=[('file', good[0]), ('file2', good[1])], headers=R),
                         422, 'either one `file2` or an enrolled `identity`'),
        'verify, unknown identity': (dict(method='POST', url='/verify', data={'identity': "x' or '1'='1", 'threshold': '.5'},
                                          files=[('file', good[0])], headers=R), 404, 'is not enrolled'),
    }

def _chunked(c, files, headers):
    "An enrolment streamed without a Content-Length (chunked), larger than the limit"
    req = c.build_request('POST', '/enrol', data={'identity': 'eve'}, files=files)
    body = req.read()
    def chunks():
        for i in range(0, len(body), 65536): yield body[i:i+65536]
    return c.post('/enrol', content=chunks(), headers={**headers, 'Content-Type': req.headers['Content-Type']})

@pytest.fixture
def served(onnx_model, tmp_path):
    "A service with keys over a calibrated zip gallery of 4 identities, small limits; (client, keys, gallery file, people)"
    model,people,queries = onnx_model
    ks = KeyStore(tmp_path/'keys.json')
    keys = {n: ks.add(n, s, c) for n,s,c in (('admin', 'write', 'gallery'), ('door', 'read', 'gallery'), ('hr', 'write', 'staff'))}
    app = make_app(model, tmp_path/'people.gallery', keys=ks, max_upload_mb=.5, max_images=4, max_pixels=10**7)
    with Server(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        _enrol_all(c, people, {'X-API-Key': keys['admin']})
        strangers = image_files(queries/'elder') + image_files(queries/'fig')
        r = c.post('/calibrate', data={'labels': [f.parent.name for f in strangers[:4]]}, files=_files(strangers[:4]), headers={'X-API-Key': keys['admin']})
        assert r.json() == {'images': 4, 'smallest_far': 1.0}, r.text
        yield c,keys,tmp_path/'people.gallery',people,app

def test_bad_input_is_refused_and_nothing_written(served):
    c,keys,gfile,people,app = served
    before,listed = gfile.read_bytes(),c.get('/identities', headers={'X-API-Key': keys['door']}).json()
    for name,(req,status,words) in _bad_requests(people, keys).items():
        r = c.request(**req)
        assert r.status_code == status and words in r.json()['detail'], (name, r.status_code, r.text[:300])
        assert all(k not in r.text for k in keys.values()), name
    r = _chunked(c, [('files', ('big.png', os.urandom(2**20)))], {'X-API-Key': keys['admin']})
    assert r.status_code == 413 and 'at least' in r.json()['detail'], r.text
    assert gfile.read_bytes() == before and c.get('/identities', headers={'X-API-Key': keys['door']}).json() == listed
    assert c.get('/health').json()['gallery']['images'] == 12

def test_fuzz_hundreds_of_bad_requests_change_nothing(served):
    "A seeded random mix of refused requests and valid reads (and deletes of nothing): the gallery file is byte for byte what it was"
    c,keys,gfile,people,app = served
    before,listed = gfile.read_bytes(),c.get('/identities', headers={'X-API-Key': keys['door']}).json()
    bad,rng = list(_bad_requests(people, keys).items()),random.Random(0)
    imgs = [(p.name, p.read_bytes()) for p in image_files(people)]
    R = {'X-API-Key': keys['door']}
    reads = [lambda: c.post('/identify', data={'threshold': '.5', 'k': '2'}, files=[('files', rng.choice(imgs))], headers=R),
             lambda: c.post('/verify', data={'threshold': '.5'}, files=[('file', rng.choice(imgs)), ('file2', rng.choice(imgs))], headers=R),
             lambda: c.post('/verify', data={'identity': 'apple', 'threshold': '.5'}, files=[('file', rng.choice(imgs))], headers=R),
             lambda: c.get('/identities', headers=R),
             lambda: c.delete('/images', params={'key': rng.choice(['"', '\\', 'a" or pk != "', "') or 1=1 --"])}, headers={'X-API-Key': keys['admin']})]
    tried = refused = ok = 0
    for i in range(400):
        if rng.random() < .7:
            name,(req,status,words) = rng.choice(bad)
            r = c.request(**req); refused += r.status_code == status
            assert r.status_code == status, (i, name, r.text[:300])
        else:
            r = rng.choice(reads)(); ok += 1
            assert r.status_code == 200, (i, r.text[:300])
            if '/images' in str(r.url): assert r.json()['removed'] == 0
        tried += 1
    print(f"fuzz: {tried} requests, {refused} refused, {ok} valid reads; gallery rows changed: 0")
    assert refused > 250 and tried == refused + ok
    assert gfile.read_bytes() == before and c.get('/identities', headers=R).json() == listed

def test_identities_and_keys_of_quotes_and_filter_syntax_kept_exactly(served):
    c,keys,gfile,people,app = served
    W,R = {'X-API-Key': keys['admin']},{'X-API-Key': keys['door']}
    names = ['a" or label != "', "b' OR '1'='1", 'c\\', 'd\\" and pk like "%', 'é 名前 \u200b', '[1, 2]', '7']
    imgs = image_files(people/'apple')
    for i,n in enumerate(names):
        r = c.post('/enrol', data={'identity': n, 'keys': [f'{n}#{i}']}, files=_files(imgs[i % 3:i % 3 + 1]), headers=W)
        assert r.json() == {'identity': n, 'added': 1, 'keys': [f'{n}#{i}']}, r.text
    got = {o['identity']: o['images'] for o in c.get('/identities', headers=R).json()['identities']}
    assert got == {**{w: 3 for w in WORDS[:4]}, **{n: 1 for n in names}}
    assert c.delete('/identities', params={'identity': names[0]}, headers=W).json() == {'identity': names[0], 'removed': 1}
    assert c.delete('/images', params={'key': f'{names[3]}#3'}, headers=W).json()['removed'] == 1
    assert c.delete('/images', params={'key': f'{names[3]}#3'}, headers=W).json()['removed'] == 0  # again: nothing left to remove
    left = {**{w: 3 for w in WORDS[:4]}, **{n: 1 for n in names if n not in (names[0], names[3])}}
    assert {o['identity']: o['images'] for o in c.get('/identities', headers=R).json()['identities']} == left
    assert Gallery.load(gfile).counts() == left  # and on disk: every acknowledged write
    r = c.post('/identify', data={'threshold': '.999'}, files=_files(imgs[2:3]), headers=R).json()
    assert r['results'][0]['score'] > .999 and r['results'][0]['identity'] in ('apple', 'c\\', '[1, 2]')

def test_killed_mid_enrol_loses_nothing_acknowledged(onnx_model, tmp_path):
    "SIGKILL while enrolments stream in: every acknowledged one is in the file; retrying them all (same keys) adds nothing twice"
    model,people,queries = onnx_model
    imgs,port,gfile = image_files(people),_port(),tmp_path/'g.gallery'
    cmd = [_exe('cosine-serve'), str(model), '--gallery', str(gfile), '--port', str(port)]
    enrol = lambda c, i: c.post('/enrol', data={'identity': f'p{i}', 'keys': [f'p{i}/a', f'p{i}/b']},
                                files=_files([imgs[i % len(imgs)], imgs[(i + 5) % len(imgs)]]))
    acked,sent = [],[]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        url = _wait(f'http://127.0.0.1:{port}', p)
        def client():
            with httpx.Client(base_url=url) as c:
                for i in range(1000):
                    sent.append(i)
                    try: r = enrol(c, i)
                    except httpx.TransportError: return  # the server died under this request
                    assert r.status_code == 200, r.text
                    acked.append(i)
        t = threading.Thread(target=client); t.start()
        while len(acked) < 8: time.sleep(.005)
        p.kill(); t.join(30)
    finally: p.kill(); p.wait()
    assert sent and len(sent) - len(acked) <= 1
    g = Gallery.load(gfile)
    assert all(g.counts().get(f'p{i}') == 2 for i in acked), (acked, g.counts())
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        with httpx.Client(base_url=_wait(f'http://127.0.0.1:{port}', p)) as c:
            for i in sent: assert enrol(c, i).status_code == 200  # every request again, the unanswered one too
            h = c.get('/health').json()['gallery']
    finally: p.send_signal(signal.SIGINT); p.wait(30)
    assert h == {'backend': 'zip', 'images': 2*len(sent), 'identities': len(sent), 'threshold': None, 'smallest_far': None}
    assert Gallery.load(gfile).counts() == {f'p{i}': 2 for i in sent}

def test_serve_refuses_workers_and_another_models_gallery(onnx_model, tmp_path):
    from fastcore.script import CliError
    from cosine_losses.cli import cosine_serve
    model,people,queries = onnx_model
    for gallery,what in ((tmp_path/'g.gallery', 'a zip gallery'), (tmp_path/'g.db', 'a Milvus Lite file')):
        with pytest.raises(CliError) as e: cosine_serve(str(model), str(gallery), workers=2)
        assert f'2 workers: {what} ({gallery}) is written by one process only' in str(e.value) and not gallery.exists()
    with pytest.raises(CliError) as e: cosine_serve(str(model), str(tmp_path/'x.gallery'), keys=str(tmp_path/'missing.json'))
    assert 'no key file' in str(e.value)
    Gallery(fingerprint='f00d', model='other.onnx').add(np.eye(512)[:2], ['a', 'b']).save(tmp_path/'other.gallery')
    r = subprocess.run([_exe('cosine-serve'), str(model), '--gallery', str(tmp_path/'other.gallery'), '--port', str(_port())],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr
    assert 'the gallery was enrolled with other.onnx (fingerprint f00d), but these embeddings come from model.onnx' in r.stderr, r.stderr

@pytest.mark.parametrize('backend', ['lite', 'server'])
def test_milvus_read_your_writes_and_exact_deletes(onnx_model, tmp_path, request, backend):
    "On Milvus Lite (in process), and on a Milvus server behind two `cosine-serve` workers: an acknowledged enrolment is seen by the next identify, whichever worker answers; quotes and filter syntax delete only what they name; a retried enrolment adds nothing"
    model,people,queries = onnx_model
    if backend == 'lite': ctx,p = Server(make_app(model, tmp_path/'g.db')),None
    else:
        uri = request.getfixturevalue('milvus_server')  # started once a session, only when a test asks for it
        port = _port()
        p = subprocess.Popen([_exe('cosine-serve'), str(model), '--gallery', uri, '--collection', f'svc_{port}', '--workers', '2', '--port', str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
        class ctx:
            url = _wait(f'http://127.0.0.1:{port}', p)
            def __enter__(self): return self
            def __exit__(self, *exc): p.send_signal(signal.SIGINT); p.communicate(timeout=60)
        ctx = ctx()
    names = ['a" or label != "', "b' or '1'='1", 'c\\', 'd\\" || pk like "%']
    imgs = image_files(people)
    # a new connection a request: with two workers, each request goes to either
    with ctx as s, httpx.Client(base_url=s.url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for i,n in enumerate(names):
            req = dict(data={'identity': n, 'keys': [f'{n}#0', f'{n}#1']}, files=_files(imgs[3*i:3*i + 2]))
            assert c.post('/enrol', **req).json()['added'] == 2
            r = c.post('/identify', data={'threshold': '.9999'}, files=_files(imgs[3*i:3*i + 2])).json()  # at once: read your writes
            assert [o['identity'] for o in r['results']] == [n, n], (backend, i, r)
            assert c.post('/enrol', **req).status_code == 200  # the same enrolment again: replaced, not added
        r = c.get('/identities')
        assert r.json()['identities'] == [{'identity': n, 'images': 2} for n in sorted(names)]
        assert c.delete('/identities', params={'identity': names[0]}).json() == {'identity': names[0], 'removed': 2}
        assert c.delete('/images', params={'key': f'{names[3]}#1'}).json()['removed'] == 1
        assert c.delete('/images', params={'key': '" or pk != "'}).json()['removed'] == 0
        assert c.get('/identities').json()['identities'] == [{'identity': n, 'images': 1 if n == names[3] else 2} for n in sorted(names[1:])]
        assert c.get('/health').json()['gallery'] | {'threshold': 0} == {'backend': 'milvus', 'images': 5, 'identities': 3, 'threshold': 0, 'smallest_far': None}
