"""Importing the package changes no fastai behaviour: fastai's classes keep every attribute they had, and a plain fastai fit, save, load
and export are byte for byte the same."""
import json, os, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'PYTHONHASHSEED': '0', 'MPLBACKEND': 'Agg', 'CUDA_VISIBLE_DEVICES': ''}

# every module of the package, found on disk, imported one by one; `milvus` needs the optional pymilvus
IMPORT_ALL = """
import importlib, pkgutil, warnings
import cosine_losses
warnings.simplefilter('ignore')
mods = sorted(m.name for m in pkgutil.walk_packages(cosine_losses.__path__, 'cosine_losses.'))
for m in mods:
    try: importlib.import_module(m)
    except ImportError as e:
        if not m.endswith('.milvus'): raise
"""

def _py(code, *args):
    r = subprocess.run([sys.executable, '-c', code, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout

SNAPSHOT = """
import inspect, sys
def snapshot():
    "Every module-level name of fastai's and fastcore's modules, and every attribute of the classes they define: name -> id"
    out = {}
    for mn,m in list(sys.modules.items()):
        if m is None or mn.split('.')[0] not in ('fastai', 'fastcore'): continue
        for k,v in list(vars(m).items()):
            out[f'{mn}.{k}'] = v
            if inspect.isclass(v) and v.__module__ == mn: out.update({f'{mn}.{k}.{a}': b for a,b in list(vars(v).items())})
    return out
"""

def test_fastais_attributes_are_untouched():
    "After importing every module of the package, every attribute fastai had is the same object: additions only, no hook on imports"
    out = _py("""
import warnings; warnings.simplefilter('ignore')
import fastai.vision.all, fastai.callback.all, fastai.distributed, fastai.collab, fastai.tabular.all
""" + SNAPSHOT + """
before,hooks = snapshot(),list(sys.meta_path)
""" + IMPORT_ALL + """
after = snapshot()
import fastai.learner, fastai.distributed
from fastai.vision.all import Learner, AvgMetric, AvgLoss, Recorder
assert Learner.save is before['fastai.learner.Learner.save'] and Learner.load is before['fastai.learner.Learner.load']
import json
print(json.dumps(dict(changed=sorted(k for k,v in before.items() if k in after and after[k] is not v and not k.endswith('.__doc__')),
                      gone=sorted(k for k in before if k not in after), added=sorted(k for k in after if k not in before),
                      hooks=[type(f).__module__ for f in sys.meta_path if f not in hooks], n=len(before), mods=mods)))
""")
    r = json.loads(out.splitlines()[-1])
    assert r['n'] > 10_000 and {'learner', 'distributed', 'learner_gallery', 'openset', 'checkpoint', 'all', 'recognition.gallery', 'experiments.compare'} <= {m.removeprefix('cosine_losses.') for m in r['mods']}
    assert r['changed'] == [] and r['gone'] == [], r
    assert r['hooks'] == []  # nothing on `sys.meta_path`
    assert 'fastai.learner.Learner.embed_items' in r['added'] and 'fastai.learner.Learner.unsharded' in r['added']  # new names are allowed
    assert 'meta_path' not in (ROOT/'cosine_losses'/'__init__.py').read_text()

FIT = """
import sys, warnings; warnings.simplefilter('ignore')
from pathlib import Path
out = Path(sys.argv[1])
if sys.argv[2] == 'all':
""" + '\n'.join('    ' + l for l in IMPORT_ALL.strip().splitlines()) + """
import torch, torch.nn as nn
torch.set_num_threads(1); torch.use_deterministic_algorithms(True)
from fastai.vision.all import *

def tiny(pretrained=False, **kwargs):
    "A resnet-like body for `vision_learner`: conv, BatchNorm, a residual block, pooling"
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), ResBlock(1, 8, 8), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))

res = {}
for name in 'plain','vision':
    set_seed(0, reproducible=True)
    g = torch.Generator().manual_seed(0)
    x,y = torch.randn(96, 3, 16, 16, generator=g),torch.randint(0, 3, (96,), generator=g)
    x[torch.arange(96), y] += 1.  # learnable: the class brightens its channel
    dsets = Datasets(list(zip(x, y)), [[ItemGetter(0)], [ItemGetter(1)]], splits=[list(range(64)), list(range(64, 96))])
    dls = dsets.dataloaders(bs=16, device='cpu')
    if name == 'plain':
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(.1),
                              nn.Linear(4, 3))
        learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy, path=out)
    else: learn = vision_learner(dls, tiny, pretrained=False, n_out=3, loss_func=CrossEntropyLossFlat(), metrics=accuracy, path=out)
    learn.recorder.add_time = False  # no wall-clock time in the table nor in the exported pickle
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-2)
    learn.save(name)
    learn.load(name)
    learn.export(f'{name}.pkl')
    loaded = load_learner(out/f'{name}.pkl')
    res[name] = dict(values=[float(v) for v in learn.recorder.values[-1]], names=list(learn.recorder.metric_names),
                     validate=[float(v) for v in learn.validate()], loaded=[float(v) for v in loaded.get_preds(dl=dls.valid)[0].flatten()])
import json; print(json.dumps(res))
"""

def test_a_plain_fastai_fit_saves_the_same_bytes(tmp_path):
    "A fastai `Learner` and a `vision_learner`, trained, saved, loaded and exported after importing every module of the package or none"
    runs = {}
    for which in 'all','none':  # in the same folder, which the exported learners hold as their `path`
        runs[which] = json.loads(_py(FIT, tmp_path/'run', which).splitlines()[-1])
        shutil.move(tmp_path/'run', tmp_path/which)
    assert runs['all'] == runs['none']
    assert runs['all']['plain']['names'] == ['epoch', 'train_loss', 'valid_loss', 'accuracy']
    files = sorted(f.relative_to(tmp_path/'none') for f in (tmp_path/'none').rglob('*') if f.is_file())
    assert [str(f) for f in files] == ['models/plain.pth', 'models/vision.pth', 'plain.pkl', 'vision.pkl']
    for f in files: assert (tmp_path/'all'/f).read_bytes() == (tmp_path/'none'/f).read_bytes(), f
