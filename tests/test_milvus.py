"`MilvusGallery` on a real Milvus Lite file and a real Milvus server, no mocks: the same identities as the faiss `Gallery`, across processes and clients, after a killed enrolment, and through `cosine-gallery`."
import json, os, signal, subprocess, sys, uuid
from pathlib import Path
import numpy as np, pandas as pd, pytest
from cosine_losses.recognition.gallery import Gallery, GalleryMismatch, _unit
from cosine_losses.recognition.milvus import MilvusGallery
from image_folders import WORDS, colour_folder, console_script

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}

HEAD = f"""import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
import numpy as np
from cosine_losses.recognition.milvus import MilvusGallery
from test_milvus import data
"""

def _run(code): return subprocess.run([sys.executable, '-c', HEAD + code], capture_output=True, text=True, env=ENV, timeout=300)

def _py(code):
    "Run `code` in a fresh Python process (numpy as np, MilvusGallery and `data` imported); its stdout"
    r = _run(code)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout

def data(classes=300, shots=10, probes=600, d=32, seed=0):
    "Clustered unit embeddings of `classes` word-and-number labels, `shots` each, and probes: half enrolled classes, half strangers"
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(2*classes, d)))
    lab = np.arange(classes*shots) % classes
    emb = _unit(centres[lab] + .3*rng.normal(size=(len(lab), d))/np.sqrt(d))
    pc = np.concatenate([rng.integers(0, classes, probes//2), classes + rng.integers(0, classes, probes - probes//2)])
    names = [f'person {i}' if i % 2 else i for i in range(classes)]  # strings and integers
    return emb,[names[i] for i in lab],_unit(centres[pc] + .3*rng.normal(size=(len(pc), d))/np.sqrt(d)),pc

def same_classes(g, ref, probes, k, eps=1e-5):
    "Milvus's `k` best classes as `Gallery`'s: scores within `eps`, labels equal but where two classes tie within `eps` (float sums differ)"
    (s,l),(rs,rl) = g.search(probes, k),ref.search(probes, k + 1)  # one more class: a tie may be with the next one
    np.testing.assert_allclose(s, rs[:, :k], atol=eps)
    gap = np.abs(np.diff(np.pad(rs, ((0, 0), (1, 0)), constant_values=np.inf), axis=1))
    clear = (gap[:, :k] > eps) & (gap[:, 1:] > eps)
    assert (l == rl[:, :k])[clear].all() and clear.mean() > .99, (clear.mean(), np.argwhere((l != rl[:, :k]) & clear)[:5])
    return True

@pytest.fixture(params=['lite', 'server'])
def at(request, tmp_path):
    "Where a test's gallery lives, (uri, collection): a Milvus Lite file, or a collection of its own on the session's Milvus server"
    if request.param == 'lite':
        yield str(tmp_path/'g.db'),'gallery'
        return
    uri,name = request.getfixturevalue('milvus_server'),f'test_{uuid.uuid4().hex[:12]}'
    yield uri,name
    g = MilvusGallery(uri, name); g.drop(); g.close()  # the server lives on: leave it no collection to keep in memory

def rows(g) -> list:
    "Every row of the gallery, (key, label as stored, embedding), in key order"
    return sorted((r['pk'], r['label'], np.asarray(r['emb'], np.float32).tobytes()) for r in g._rows(['pk', 'label', 'emb']))

def test_the_same_identities_as_gallery(at):
    emb,labels,probes,pc = data()
    ref = Gallery().add(emb, labels).calibrate()
    with MilvusGallery(*at) as g:
        g.add(emb, labels).calibrate()
        assert (len(g), set(g.classes)) == (3000, set(ref.classes))
        assert same_classes(g, ref, probes, 3)
        np.testing.assert_allclose(g.impostor, ref.impostor, atol=1e-5)
        for far in (.01, .05):
            (got,gs),(want,ws) = g.identify(probes, far=far),ref.identify(probes, far=far)
            assert got == want and np.allclose(gs, ws, atol=1e-5)
        assert 0 < sum(o is None for o in got) < len(got)  # some strangers rejected, some probes identified
        g.remove('person 1'); ref.remove('person 1')
        assert len(g) == 2990 and same_classes(g, ref, probes, 2)

def test_a_crowded_class_does_not_hide_the_next(at):
    "60 images of one class nearer the probe than any other class's: a grouping search that looks at 10·k images finds one class"
    rng = np.random.default_rng(1)
    probe = _unit(rng.normal(size=(1, 16)))
    crowd = _unit(probe + .05*rng.normal(size=(60, 16))); others = _unit(probe + .6*rng.normal(size=(40, 16)))
    labels = ['crowd']*60 + [f'other {i % 20}' for i in range(40)]
    ref = Gallery().add(np.concatenate([crowd, others]), labels).calibrate()
    with MilvusGallery(*at) as g:
        g.add(np.concatenate([crowd, others]), labels).calibrate()
        assert same_classes(g, ref, probe, 3) and g.search(probe, 3)[1][0, 0] == 'crowd'
        np.testing.assert_allclose(g.impostor, ref.impostor, atol=1e-5); assert np.isfinite(g.impostor).all()

def test_add_remove_and_reopen_in_new_processes(at):
    db,name = at
    emb,labels,probes,_ = data(classes=50, shots=4)
    with MilvusGallery(db, name, fingerprint='f00d', model='model.onnx') as g: g.add(emb[:100], labels[:100])
    out = json.loads(_py(f"""
emb,labels,probes,_ = data(classes=50, shots=4)
with MilvusGallery({db!r}, {name!r}) as g:
    n,fp = len(g),g.fingerprint
    g.add(emb[100:], labels[100:]).remove(4)
    print(__import__('json').dumps(dict(n=n, fp=fp, model=g.model, after=len(g), classes=sorted(map(str, g.classes)))))"""))
    assert out == dict(n=100, fp='f00d', model='model.onnx', after=196, classes=sorted(str(o) for o in set(labels) if o != 4))
    ref = Gallery().add(emb, labels).remove(4)
    with MilvusGallery(db, name, fingerprint='f00d') as g:
        assert len(g) == 196 and same_classes(g, ref, probes, 3)
        with pytest.raises(KeyError, match="4 is not in the gallery"): g.remove(4)

def test_calibrate_in_one_process_identify_in_another(at):
    db,name = at
    _py(f"""
emb,labels,probes,_ = data()
with MilvusGallery({db!r}, {name!r}, threshold=.6) as g: g.add(emb, labels).calibrate(probes[300:])  # strangers' scores""")
    got = json.loads(_py(f"""
emb,labels,probes,_ = data()
with MilvusGallery({db!r}, {name!r}) as g:
    ids,scores = g.identify(probes[:300], far=.05)
    print(__import__('json').dumps(dict(ids=ids, t=g.threshold, n=len(g.impostor))))"""))
    emb,labels,probes,pc = data()
    ref = Gallery().add(emb, labels).calibrate(probes[300:])
    assert got['ids'] == ref.identify(probes[:300], far=.05)[0] and (got['t'], got['n']) == (.6, 300)
    assert np.mean([a is not None for a in got["ids"]]) > .8  # enrolled classes: most identified

def test_enrolling_twice_or_after_a_kill_gives_one_collection(at):
    (db,name),(emb,labels) = at,data(classes=400, shots=10)[:2]
    keys = [f'{l}/{i}.jpg' for i,l in enumerate(labels)]
    kill = f"""
emb,labels = data(classes=400, shots=10)[:2]
keys = [f'{{l}}/{{i}}.jpg' for i,l in enumerate(labels)]
g,calls = MilvusGallery({db!r}, {name!r}, batch=500),[0]
up = g.client.upsert
def upsert(*a, **k):
    calls[0] += 1
    if calls[0] == 4: print(f'\\nrows {{len(g)}}', flush=True); __import__('os').kill(__import__('os').getpid(), 9)  # killed mid-enrolment
    return up(*a, **k)
g.client.upsert = upsert
g.add(emb, labels, keys=keys)"""
    r = _run(kill)
    assert r.returncode == -signal.SIGKILL and '\nrows 1500\n' in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])
    with MilvusGallery(db, name) as g:
        assert len(g) == 1500  # what the killed run upserted, whole batches
        g.add(emb, labels, keys=keys); assert len(g) == 4000  # the rerun completes it
        g.add(emb, labels, keys=keys); assert len(g) == 4000  # and again adds nothing
        g.add(emb[:10], labels[:10]); g.add(emb[:10], labels[:10]); assert len(g) == 4010  # content keys: once
        ref = Gallery().add(emb, labels).add(emb[:10], labels[:10])
        probes = data(classes=400, shots=10)[2]
        assert same_classes(g, ref, probes, 2)

def test_bad_rows_are_refused_and_nothing_changes(at, tmp_path):
    "Refused rows leave the gallery row for row (and Milvus Lite's folder byte for byte) as it was"
    files = lambda: {str(f.relative_to(tmp_path)): f.read_bytes() for f in sorted(tmp_path.rglob('*')) if f.is_file() and f.name != 'LOCK'}
    emb,labels = data(classes=20, shots=3)[:2]
    with MilvusGallery(*at, fingerprint='f00d') as g:
        g.add(emb, labels).calibrate()
        want = rows(g),g._meta()
    before = files()  # Milvus Lite writes its folder when closed
    with MilvusGallery(*at) as g:
        bad = emb[:6].copy(); bad[2] = 0; bad[4, 1] = np.inf
        with pytest.raises(ValueError, match=r'of 6 embeddings, 1 not finite \(rows 4\) and 1 zero \(rows 2\)'): g.add(bad, labels[:6])
        with pytest.raises(GalleryMismatch, match='size 8'): g.add(np.ones((2, 8)), ['x', 'y'])
        with pytest.raises(GalleryMismatch, match='fingerprint f00d'): g.add(emb[:2], ['x', 'y'], fingerprint='beef')
        with pytest.raises(ValueError, match='3 embeddings but 2 labels'): g.add(emb[:3], ['x', 'y'])
        with pytest.raises(KeyError, match="'zoe' is not in the gallery"): g.remove('zoe')
        assert len(g) == 60
        assert (rows(g), g._meta()) == want
    assert files() == before

def test_cosine_gallery_with_milvus(trained):
    learn,d = trained
    enrol,queries = colour_folder(d/'enrol3', WORDS[4:7], 4, 1),colour_folder(d/'queries3', WORDS[4:8], 3, 2)
    exe = console_script('cosine-gallery')
    run = lambda *a: subprocess.run([exe, *map(str, a)], capture_output=True, text=True, env=ENV, timeout=300, cwd=d)
    r = run('identify', 'model.onnx', queries, '--gallery', 'm.db', '--threshold', '.9')
    assert r.returncode != 0 and not (d/'m.db').exists()
    assert "no gallery m.db (collection 'gallery'): run `cosine-gallery enrol` first" in r.stderr, r.stderr
    for said in ("enrolled 12 images of 3 classes into m.db (collection 'fruit')",  # enrolled twice: the same collection, nothing added
                 f"nothing new: the 12 images of {enrol} were all in m.db (collection 'fruit') already"):
        r = run('enrol', 'model.onnx', enrol, '--gallery', 'm.db', '--collection', 'fruit')
        assert r.returncode == 0 and said in r.stdout, (r.stdout, r.stderr[-3000:])
    r = run('enrol', 'model.onnx', enrol, '--gallery', 'g.zip')
    assert r.returncode == 0, r.stderr[-3000:]
    for g in ('m.db', 'g.zip'):
        r = run('identify', 'model.onnx', queries, '--gallery', g, '--collection', 'fruit', '--far', '.9', '--out', f'{g}.csv')
        assert r.returncode == 0, r.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(d/'m.db.csv'), pd.read_csv(d/'g.zip.csv'), atol=2e-4)
    assert list(pd.read_csv(d/'m.db.csv').columns) == ['file', 'label', 'score']
    from cosine_losses.learner import cosine_learner
    cosine_learner(learn.dls, m2=.3).export_onnx(d/'other.onnx')
    r = run('enrol', 'other.onnx', enrol, '--gallery', 'm.db', '--collection', 'fruit')
    assert r.returncode != 0 and 'Traceback' not in r.stderr
    assert "or --collection, or pass --replace to start m.db (collection 'fruit') anew" in r.stderr, r.stderr
    r = run('enrol', 'other.onnx', d/'nowhere', '--gallery', 'm.db', '--collection', 'fruit', '--replace')  # a typo: nothing lost
    assert r.returncode != 0 and 'no folder' in r.stderr, r.stderr
    with MilvusGallery(d/'m.db', 'fruit', fingerprint=learn.fingerprint) as g: assert len(g) == 12
    r = run('enrol', 'other.onnx', enrol, '--gallery', 'm.db', '--collection', 'fruit', '--replace')
    assert r.returncode == 0 and 'enrolled 12 images' in r.stdout, r.stderr[-3000:]

def test_read_your_writes(at):
    "What `add`, `remove` and `discard` acknowledged, the next read sees at once, this client's and another's (a server's default consistency hides both)"
    emb,labels,probes,_ = data(classes=100, shots=10)
    keys = [f'{l}/{i}.png' for i,l in enumerate(labels)]
    ref = Gallery().add(emb, labels, keys=keys)
    with MilvusGallery(*at) as g:
        g.add(emb, labels, keys=keys)
        assert len(g) == 1000 and g.counts() == ref.counts() and len(g.counts()) == 100
        assert same_classes(g, ref, probes, 3)
        (got,gs),(want,ws) = g.identify(probes, threshold=.5),ref.identify(probes, threshold=.5)
        assert got == want and np.allclose(gs, ws, atol=1e-5)
        other = MilvusGallery(*at)  # a second client of the same collection: another worker of a service
        g.remove('person 1'); ref.remove('person 1')
        assert len(other) == len(g) == 990 and 'person 1' not in other.counts() and other.counts() == g.counts() == ref.counts()
        gone = keys[:5] + ['nowhere.png']  # keys 1 and 3 are images of 'person 1' and 'person 3': the first gone already
        assert g.discard(gone) == ref.discard(gone) == 4 and other.discard(gone) == 0
        assert len(other) == len(g) == 986 and other.counts() == g.counts() == ref.counts() and other.counts()['person 3'] == 9
        new = _unit(probes[:3])
        g.add(new, ['zoe']*3, keys=['zoe/a', 'zoe/b', 'zoe/c']); ref.add(new, ['zoe']*3, keys=['zoe/a', 'zoe/b', 'zoe/c'])
        assert other.identify(new, threshold=.99)[0] == ['zoe']*3 and other.counts()['zoe'] == 3
        assert same_classes(other, ref, probes, 3)
        other.close()

NASTY = ['a" or label != "', "b' or label != '", 'c\\" or 1 == 1 or \\"', 'd\\', '"', "'", '\\"', 'e) || (label like "%',
         'ünï cødé ☃ 😀', 'f\nnew line\ttab', '7', 7, '', 'label', '[1, 2]', 'g" in ["', "h' in ['", 'i\\u0022',
         'z\\" || pk like "%']  # the largest key: listing pages after it

def test_labels_and_keys_are_data_never_filter_syntax(at):
    "Labels and keys full of quotes, backslashes, unicode and Milvus filter syntax: removing or discarding one takes that one, row for row"
    labels = [o for o in NASTY for _ in range(2)] + ['plain']*4
    keys = [f'{o}#{i}' if isinstance(o, str) else f'int {o}#{i}' for i,o in enumerate(labels)]  # the label itself in the key
    emb = _unit(np.random.default_rng(3).normal(size=(len(labels), 8)))
    with MilvusGallery(*at) as g:
        g.add(emb, labels, keys=keys)
        want = rows(g)
        assert [r[0] for r in want] == sorted(keys) and g.counts() == Gallery().add(emb, labels).counts()
        with pytest.raises(KeyError): g.remove('" or ""=="')  # no such label, whatever the filter would say: nothing removed
        assert rows(g) == want
        for o in NASTY[:12]:  # '7' and then 7: a string and an integer are two labels
            g.remove(o)
            want = [r for r in want if r[1] != json.dumps(o)]
            assert rows(g) == want, o
        assert g.counts() == {o: 2 for o in NASTY[12:]} | {'plain': 4}
        for o in NASTY[12:]:  # one image of each label left goes by its key; the other stays
            k = keys[labels.index(o)]
            assert g.discard([k, k + '" or pk != "', k + "' or pk != '", k + '\\']) == 1
            want = [r for r in want if r[0] != k]
            assert rows(g) == want, k
        assert g.discard([keys[labels.index(o)] for o in NASTY[12:]]) == 0 and g.counts() == {o: 1 for o in NASTY[12:]} | {'plain': 4}

def test_cosine_gallery_with_a_milvus_server(trained, milvus_server):
    "`cosine-gallery` enrols into a collection of the server and identifies against it as against a zip gallery"
    learn,d = trained
    enrol,queries = colour_folder(d/'enrol4', WORDS[4:7], 4, 3),colour_folder(d/'queries4', WORDS[4:8], 3, 4)
    exe,name = console_script('cosine-gallery'),f'cli_{uuid.uuid4().hex[:8]}'
    run = lambda *a: subprocess.run([exe, *map(str, a)], capture_output=True, text=True, env=ENV, timeout=300, cwd=d)
    r = run('identify', 'model.onnx', queries, '--gallery', milvus_server, '--collection', name, '--threshold', '.9')
    assert r.returncode != 0 and f"no gallery {milvus_server} (collection {name!r}): run `cosine-gallery enrol` first" in r.stderr, r.stderr
    for said in (f"enrolled 12 images of 3 classes into {milvus_server} (collection {name!r})",
                 f"nothing new: the 12 images of {enrol} were all in {milvus_server} (collection {name!r}) already"):
        r = run('enrol', 'model.onnx', enrol, '--gallery', milvus_server, '--collection', name)
        assert r.returncode == 0 and said in r.stdout, (r.stdout, r.stderr[-3000:])
    r = run('enrol', 'model.onnx', enrol, '--gallery', 'g4.zip')
    assert r.returncode == 0, r.stderr[-3000:]
    for g,out in ((milvus_server, 'server.csv'), ('g4.zip', 'zip.csv')):
        r = run('identify', 'model.onnx', queries, '--gallery', g, '--collection', name, '--far', '.9', '--out', out)
        assert r.returncode == 0 and 'identified 12 images' in r.stdout, r.stderr[-3000:]
    got,want = pd.read_csv(d/'server.csv'),pd.read_csv(d/'zip.csv')
    pd.testing.assert_frame_equal(got, want, atol=2e-4)
    assert (got.label != 'unknown').any()
    with MilvusGallery(milvus_server, name) as g:
        assert len(g) == 12 and g.counts() == {w: 4 for w in WORDS[4:7]}
        g.drop()
