"A gallery across processes: saved, loaded fresh, changed, refused when mismatched, kept whole by a killed save; and `cosine-gallery`."
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pytest, torch
from cosine_losses.recognition.gallery import Gallery, GalleryMismatch
from cosine_losses.learner_gallery import model_fingerprint

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
from image_folders import WORDS, colour_folder as _folder, console_script as _exe

def _py(code, **kw):
    "Run `code` in a fresh Python process; its stdout"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=ENV, timeout=300, **kw)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout

def _emb(n, d=16, seed=0): return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))

def test_saved_gallery_in_a_fresh_process(tmp_path):
    g = Gallery(threshold=.5, fingerprint='cafe').add(_emb(6), ['ann', 'ann', 'bob', 'bob', 'cy', 7])
    p = g.save(tmp_path/'g.gallery')
    q = _emb(4, seed=1)
    np.save(tmp_path/'q.npy', q.numpy())
    out = _py(f"""
import json, numpy as np
from cosine_losses.recognition.gallery import Gallery
g = Gallery.load({str(p)!r}, fingerprint='cafe')
q = np.load({str(tmp_path/'q.npy')!r})
s,l = g.search(q, 3)
print(json.dumps(dict(labels=g.labels, threshold=g.threshold, scores=s.tolist(), found=l.tolist())))
g.add(np.load({str(tmp_path/'q.npy')!r})[:2], ['dee', 'ann']).remove('bob').save({str(p)!r})
""")
    r = json.loads(out.splitlines()[-1])
    s,l = g.search(q, 3)
    assert r['labels'] == ['ann', 'ann', 'bob', 'bob', 'cy', 7] and r['threshold'] == .5 and r['found'] == l.tolist()
    np.testing.assert_allclose(r['scores'], s, atol=1e-6)
    g2 = Gallery.load(p)  # as the other process left it: added to, removed from
    assert g2.labels == ['ann', 'ann', 'cy', 7, 'dee', 'ann'] and g2.classes == ['ann', 'cy', 7, 'dee']
    np.testing.assert_allclose(g2.search(q[:1], 1)[0], [[1.]], atol=1e-6)  # the probe enrolled as 'dee' finds itself
    assert g2.search(q[:1], 1)[1][0, 0] == 'dee'
    with pytest.raises(GalleryMismatch, match=r'enrolled with a model \(fingerprint cafe\), but these embeddings come from b.pkl \(fingerprint beef\)'):
        Gallery.load(p, fingerprint='beef', model='b.pkl')
    with pytest.raises(GalleryMismatch, match='fingerprint beef'): g2.add(_emb(1), ['x'], fingerprint='beef')
    with pytest.raises(GalleryMismatch, match='size 8 from another model, but the gallery holds size 16'): g2.add(_emb(1, d=8), ['x'])

def test_save_killed_midway_leaves_the_old_gallery(tmp_path):
    old = Gallery().add(_emb(5), list('abcde'))
    p,marker = old.save(tmp_path/'g.gallery'),tmp_path/'writing'
    # the new save writes its metadata, then signals and hangs before the index: killed there, mid-file
    proc = subprocess.Popen([sys.executable, '-c', f"""
import time, zipfile, pathlib, torch
from cosine_losses.recognition.gallery import Gallery
_w = zipfile.ZipFile.writestr
def slow(self, name, data, *a, **k):
    _w(self, name, data, *a, **k)
    if name == 'meta.json': pathlib.Path({str(marker)!r}).touch(); time.sleep(600)
zipfile.ZipFile.writestr = slow
Gallery().add(torch.randn(50, 16), ['z']*50).save({str(p)!r})
"""], env=ENV, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline: time.sleep(.1)
    assert marker.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert [f for f in tmp_path.iterdir() if f.name.endswith('.tmp')]  # the half-written file was there when it died
    g = Gallery.load(p)
    assert g.labels == list('abcde')
    np.testing.assert_array_equal(g.search(_emb(5), 1)[1][:, 0], list('abcde'))

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A cosine learner trained briefly on 6 of the 12 synthetic classes, exported; with the unseen classes' images"
    from fastai.vision.all import set_seed
    from cosine_losses.data import synthetic_idx, idx_dls
    from cosine_losses.splits import open_set_dls
    from cosine_losses.learner import cosine_learner
    d = tmp_path_factory.mktemp('tiny')
    dls = open_set_dls(idx_dls(synthetic_idx(d/'syn', n_train=1200, n_valid=600, n_classes=12), bs=64), seen=6, bs=64)
    set_seed(0, reproducible=True)
    learn = cosine_learner(dls, m2=.5)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 3e-2)
    learn.export(d/'tiny.pkl')
    rows = dls.unseen.dataset.items
    return learn,d/'tiny.pkl',rows.imgs,rows.labels

def test_identify_rejects_a_stranger_and_accepts_an_enrolled_class(tiny):
    learn,_,imgs,lab = tiny
    gi = torch.cat([torch.nonzero(lab == c)[:5, 0] for c in range(4)])
    with learn.no_bar():
        g = learn.gallery(imgs[gi], [WORDS[c] for c in lab[gi]])
        enrolled = torch.nonzero((lab == 2))[5:, 0]  # images of 'cherry' not in the gallery
        names,_ = learn.identify(g, imgs[enrolled], threshold=.9)
        assert np.mean([n == 'cherry' for n in names]) > .9
        names,scores = learn.identify(g, imgs[lab == 5], threshold=.9)  # a class never enrolled (nor trained on)
        assert np.mean([n is None for n in names]) > .9 and scores.max() < .95

def test_exported_learner_embeds_and_identifies_alone(tiny, tmp_path):
    learn,pkl,imgs,lab = tiny
    from PIL import Image
    files = []
    for i in range(6):
        files.append(tmp_path/f'{i}.png'); Image.fromarray(imgs[i].numpy()).save(files[-1])
    with learn.no_bar(): ref = learn.embed_items(files)[0]
    out = _py(f"""
import json, sys
from fastai.learner import load_learner
from cosine_losses.all import *  # the methods `learner_gallery` adds to `Learner`
learn = load_learner({str(pkl)!r})
with learn.no_bar():
    e,_ = learn.get_embeddings(dl=learn.dls.test_dl({[str(f) for f in files]!r}))
    g = learn.gallery({[str(f) for f in files[:3]]!r}, ['a', 'b', 'c'])
    names,_ = learn.identify(g, {[str(f) for f in files[:3]]!r}, threshold=.99)
print(json.dumps(dict(emb=e.tolist(), names=names, fp=g.fingerprint)))
""")
    r = json.loads(out.splitlines()[-1])
    np.testing.assert_allclose(r['emb'], ref, atol=1e-5)
    assert r['names'] == ['a', 'b', 'c'] and r['fp'] == model_fingerprint(learn.model)

def test_cosine_gallery_end_to_end(tmp_path):
    from fastai.vision.all import ImageDataLoaders, Resize, set_seed
    from cosine_losses.learner import cosine_learner
    train = _folder(tmp_path/'train', WORDS[:4], 24, 0)
    dls = ImageDataLoaders.from_folder(train, valid_pct=.25, seed=0, item_tfms=Resize(32), bs=16)
    set_seed(0, reproducible=True)
    learn = cosine_learner(dls, m2=.3)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(4, 1e-2)
    learn.export(tmp_path/'model.pkl')
    enrol = _folder(tmp_path/'enrol', WORDS[4:7], 4, 1)
    (enrol/'fig'/'broken.png').write_bytes(b'not an image')
    queries = tmp_path/'queries'
    _folder(queries, WORDS[4:8], 3, 2)  # 'hazel' was never enrolled
    run = lambda *a: subprocess.run([_exe('cosine-gallery'), *map(str, a)], capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    r = run('enrol', 'model.pkl', enrol, '--gallery', 'g.gallery')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'enrolled 12 images of 3 classes' in r.stdout and 'skipped 1 unreadable image(s)' in r.stderr and 'broken.png' in r.stderr
    g = Gallery.load(tmp_path/'g.gallery')
    assert sorted(g.classes) == ['elder', 'fig', 'grape'] and g.impostor is not None
    r = run('identify', 'model.pkl', queries, '--gallery', 'g.gallery', '--threshold', '.9', '--out', 'who.csv')
    assert r.returncode == 0, r.stderr[-3000:]
    import pandas as pd
    df = pd.read_csv(tmp_path/'who.csv')
    assert list(df.columns) == ['file', 'label', 'score'] and len(df) == 12
    truth = df.file.map(lambda f: f.split('/')[0])
    assert (df.label == truth)[truth != 'hazel'].mean() >= 8/9, df  # the enrolled classes' queries
    from fastai.learner import load_learner
    with (m := load_learner(tmp_path/'model.pkl')).no_bar():  # the same, in this process: the command adds nothing and loses nothing
        names,scores = m.identify(Gallery.load(tmp_path/'g.gallery'), [queries/f for f in df.file], threshold=.9)
    assert df.label.tolist() == ['unknown' if n is None else n for n in names]
    np.testing.assert_allclose(df.score, scores, atol=1e-4)
    r = run('enrol', 'nothing.pkl', enrol)  # an error is one line, no traceback
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].endswith("no model file nothing.pkl: pass the exported learner (`learn.export(...)`'s .pkl) "
                                                                           "or `learn.export_onnx(...)`'s .onnx")
    assert 'Traceback' not in r.stderr, r.stderr[-2000:]
    from fastcore.script import CliError
    from cosine_losses.cli import cosine_gallery
    (tmp_path/'blank').mkdir()
    for args,msg in (((tmp_path/'model.pkl', tmp_path/'none'), 'no folder'), ((tmp_path/'model.pkl', tmp_path/'blank'), 'no images in')):
        with pytest.raises(CliError, match=msg): cosine_gallery('enrol', *map(str, args), gallery=str(tmp_path/'x.gallery'))
    with pytest.raises(CliError, match='pass --far'): cosine_gallery('identify', str(tmp_path/'model.pkl'), str(queries), gallery=str(tmp_path/'g.gallery'))
    with pytest.raises(CliError, match='no gallery file'): cosine_gallery('identify', str(tmp_path/'model.pkl'), str(queries), gallery='none', far=.1)
    with pytest.raises(CliError, match='cannot resolve FAR 0.01'):  # 12 enrolled images calibrate FAR ≥ 10/12 only
        cosine_gallery('identify', str(tmp_path/'model.pkl'), str(queries), gallery=str(tmp_path/'g.gallery'), far=.01)
    # another model: refused with what differs and what to do, the gallery file untouched; --replace starts it anew
    other = cosine_learner(dls, m2=.3, emb_size=64); other.export(tmp_path/'other.pkl')
    before = (tmp_path/'g.gallery').read_bytes()
    r = run('enrol', 'other.pkl', enrol, '--gallery', 'g.gallery')
    assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert (f'g.gallery: the gallery was enrolled with model.pkl (fingerprint {learn.fingerprint}), but these embeddings come from other.pkl '
            f'(fingerprint {other.fingerprint})' in r.stderr and 'Enrol into a new --gallery file, or pass --replace to start g.gallery anew' in r.stderr), r.stderr
    r = run('identify', 'other.pkl', queries, '--gallery', 'g.gallery', '--threshold', '.5')
    assert r.returncode != 0 and 'Identify with the model it was enrolled with' in r.stderr, r.stderr
    assert (tmp_path/'g.gallery').read_bytes() == before
    r = run('enrol', 'other.pkl', enrol, '--gallery', 'g.gallery', '--replace')
    assert r.returncode == 0, r.stderr[-2000:]
    assert Gallery.load(tmp_path/'g.gallery').d == 64 and len(Gallery.load(tmp_path/'g.gallery')) == 12
    # a model whose embeddings are all zero (a dead embedding layer): no direction to compare, nothing written
    emb_bn = learn.model[1][0][1]
    with torch.no_grad(): emb_bn.weight.zero_(); emb_bn.bias.zero_()
    learn.export(tmp_path/'dead.pkl')
    before = (tmp_path/'g.gallery').read_bytes()
    with pytest.raises(CliError, match='of 12 embeddings, 12 zero \\(rows 0, 1, 2, .*has no direction'):
        cosine_gallery('enrol', str(tmp_path/'dead.pkl'), str(enrol), gallery=str(tmp_path/'g.gallery'), replace=True)
    assert (tmp_path/'g.gallery').read_bytes() == before

def test_cosine_gallery_help_is_quiet():
    r = subprocess.run([_exe('cosine-gallery'), '--help'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0 and '{enrol,identify}' in r.stdout and '--far' in r.stdout, r.stderr
    assert 'Warning' not in r.stderr, r.stderr  # the package's import hides fastai's import-time jit warning, as the commands do
