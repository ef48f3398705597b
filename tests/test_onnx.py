"Deployment without pickle and without the training stack: `export_onnx`, `OnnxEmbedder` where torch and fastai cannot be imported, and `cosine-gallery` on either model file."
import json, os, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
from image_folders import WORDS, colour_folder as _folder, console_script as _exe
REFUSE = """
import sys
class Refuse:  # torch and fastai cannot be imported in this process
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision', 'fastai'): raise ImportError(f'{name} may not be imported here')
sys.meta_path.insert(0, Refuse())
"""

def _py(code):
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout

def test_import_boundary():
    out = _py(REFUSE + """
import importlib, pkgutil, cosine_losses.recognition as rec
mods = [importlib.import_module(f'{rec.__name__}.{m.name}') for m in pkgutil.iter_modules(rec.__path__)]  # every module, whatever joins
assert {'gallery', 'calibration', 'embedder', 'milvus', 'metrics', 'curves'} <= {m.__name__.split('.')[-1] for m in mods}
print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'fastai')))
try: from cosine_losses.learner_gallery import model_fingerprint  # the learner side needs torch: refused here, as it should be
except ImportError as e: print('refused:', e)
""")
    assert out.splitlines()[-2] == '[]' and out.splitlines()[-1].startswith('refused: fastai may not be imported'), out

def test_onnx_without_torch_identifies_as_the_learner(trained):
    learn,d = trained
    enrol,queries = _folder(d/'enrol', WORDS[4:7], 4, 1),_folder(d/'queries', WORDS[4:8], 3, 2)
    from cosine_losses.recognition.gallery import Gallery, image_files
    ef,qf = image_files(enrol),image_files(queries)
    with learn.no_bar():
        ref = Gallery().add(learn.embed_items(ef)[0], [f.parent.name for f in ef])
        want,wscores = ref.identify(learn.embed_items(qf)[0], threshold=.8)
        qemb = learn.embed_items(qf)[0].numpy()
    out = _py(REFUSE + f"""
import json, numpy as np
from cosine_losses.recognition.gallery import Gallery
from cosine_losses.recognition.embedder import OnnxEmbedder
emb = OnnxEmbedder({str(d/'model.onnx')!r})
ef,qf = {[str(f) for f in ef]!r},{[str(f) for f in qf]!r}
g = emb.gallery(ef, [f.split('/')[-2] for f in ef])
names,scores = emb.identify(g, qf, threshold=.8)
print(json.dumps(dict(names=names, scores=scores.tolist(), emb=emb(qf).tolist(), fp=emb.fingerprint)))
""")
    r = json.loads(out.splitlines()[-1])
    assert r['names'] == want and r['fp'] == learn.fingerprint
    e = np.array(r['emb'])
    assert ((e*qemb).sum(1)/np.linalg.norm(e, axis=1)/np.linalg.norm(qemb, axis=1)).min() >= .9999
    np.testing.assert_allclose(r['scores'], wscores, atol=1e-5)
    assert np.mean([n == f.parent.name for n,f in zip(want, qf) if f.parent.name != 'hazel']) >= 8/9  # the model does recognise them

def test_cosine_gallery_takes_either_file(trained):
    learn,d = trained
    enrol,queries = _folder(d/'enrol2', WORDS[4:7], 4, 1),_folder(d/'queries2', WORDS[4:8], 3, 2)
    run = lambda *a: subprocess.run([_exe('cosine-gallery'), *map(str, a)], capture_output=True, text=True, env=ENV, timeout=300, cwd=d)
    outs = {}
    for kind in ('pkl', 'onnx'):
        r = run('enrol', f'model.{kind}', enrol, '--gallery', f'{kind}.gallery')
        assert r.returncode == 0 and 'enrolled 12 images of 3 classes' in r.stdout, r.stderr[-3000:]
        r = run('identify', f'model.{kind}', queries, '--gallery', f'{kind}.gallery', '--threshold', '.9', '--out', f'{kind}.csv')
        assert r.returncode == 0, r.stderr[-3000:]
        outs[kind] = pd.read_csv(d/f'{kind}.csv')
    pd.testing.assert_frame_equal(outs['pkl'], outs['onnx'], atol=2e-4)  # scores are rounded to 4 places
    r = run('identify', 'model.onnx', queries, '--gallery', 'pkl.gallery', '--threshold', '.9', '--out', 'cross.csv')  # enrolled with the other kind
    assert r.returncode == 0, r.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(d/'cross.csv'), outs['pkl'], atol=2e-4)
    from cosine_losses.learner import cosine_learner
    other = cosine_learner(learn.dls, m2=.3); other.export_onnx(d/'other.onnx')
    r = run('identify', 'other.onnx', queries, '--gallery', 'pkl.gallery', '--threshold', '.9')
    assert r.returncode != 0 and 'Traceback' not in r.stderr
    assert (f'pkl.gallery: the gallery was enrolled with model.pkl (fingerprint {learn.fingerprint}), but these embeddings come from '
            f'other.onnx (fingerprint {other.fingerprint})') in r.stderr, r.stderr
    (d/'junk.onnx').write_text('not a model')
    r = run('enrol', 'junk.onnx', enrol, '--gallery', 'junk.gallery')
    assert r.returncode != 0 and 'junk.onnx is not an ONNX model' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (d/'junk.gallery').exists()
