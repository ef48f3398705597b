"A newcomer's first hour on a small long-tailed folder of word-named classes, walked with the README's own calls: nothing silent"
import warnings
import numpy as np, pytest, torch, matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from fastai.vision.all import get_image_files, parent_label
from cosine_losses.identities import glyph_identities, write_identity_folder
from cosine_losses.data import folder_dls
from cosine_losses.splits import open_set_dls
from cosine_losses.openset import open_set_metrics, OpenSetMetrics
from cosine_losses.learner import cosine_learner
from cosine_losses.interpret import RecognitionInterpretation
import cosine_losses.learner_gallery  # learn.gallery, learn.identify

ADJ = 'amber brisk calm dusty eager faint gentle hollow icy jolly keen lucky misty noble odd proud quiet rusty shy tidy'.split()
NOUN = 'badger crane dingo egret ferret gecko heron ibis jackal koala lemur marten newt otter panda quail raven stoat tapir viper'.split()

@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    "240 identities named like 'misty_heron_106', colour 32 × 32, long-tailed: most with 3–5 images, a few with 12 or 20"
    n,rng = 240,np.random.default_rng(0)
    counts = rng.choice([3]*7 + [4]*3 + [5]*2 + [12, 20], n)
    x,y,_ = glyph_identities(n, 20, seed=0)
    keep = np.concatenate([np.flatnonzero(y.numpy() == i)[:counts[i]] for i in range(n)])
    path = tmp_path_factory.mktemp('photos')
    write_identity_folder(x[keep], y[keep], [f'{ADJ[i % 20]}_{NOUN[i//20]}_{i}' for i in range(n)], path)
    return path

def _fit(learn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as w, learn.no_bar():
        warnings.simplefilter('always')
        learn.fit_one_cycle(*args, **kwargs)
    return [str(o.message) for o in w]

def test_a_new_users_hour(folder):
    dls = folder_dls(folder, size=32)
    assert dls.path == folder  # `learn.save` and `export` write next to the data, as fastai's `from_folder`
    odls = open_set_dls(dls, seen=.5, seed=0)
    files = get_image_files(folder)
    unseen = [f for f in files if parent_label(f) in set(odls.unseen_classes)]
    assert odls.unseen_split == 'all' and len(odls.unseen.dataset) == len(unseen)  # the held-out fifth holds too few pairs to score
    learn = cosine_learner(odls)
    with learn.no_bar(): lr = learn.lr_find(show_plot=False).valley
    assert 1e-5 < lr < 1, lr
    said = _fit(learn, 5, lr, cbs=OpenSetMetrics())
    small = [m for m in said if 'cannot tell chance from learning' in m]
    assert len(small) == 1, said  # too small to judge by accuracy, and told so once
    scores = open_set_metrics(*learn.get_embeddings(dl=odls.unseen))
    assert {k for k,v in scores.items() if np.isnan(v)} == set(scores.reasons), scores  # every NaN with its reason
    notes = repr(scores).splitlines()[1:]
    assert notes[0].startswith(f'measured on {len(unseen)} images of {len(odls.unseen_classes)} classes'), notes
    fig = learn.recorder.plot_metrics()  # after `get_embeddings`, which starts a new table in fastai's recorder
    assert len(fig.axes) >= 7 and all(len(l.get_xdata()) == 5 for ax in fig.axes[:7] for l in ax.get_lines()); plt.close('all')
    interp = RecognitionInterpretation.from_learner(learn, dl=odls.unseen)
    interp.plot_top_matches(); interp.plot_false_accepts(far=.1); interp.plot_det(); interp.plot_embeddings('tsne'); plt.close('all')

    enrolled,strangers = odls.unseen_classes[:40],odls.unseen_classes[40:]
    enrol = [f for f in unseen if parent_label(f) in enrolled]
    probes = [f for f in unseen if parent_label(f) in enrolled][1::2]
    gallery = learn.gallery(enrol[::2], [parent_label(f) for f in enrol[::2]])
    n = len([f for f in unseen if parent_label(f) in strangers])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        gallery.calibrate(learn.embed_items([f for f in unseen if parent_label(f) in strangers])[0], far=1e-2)
    assert [str(o.message) for o in w] == [f'{n} strangers resolve a FAR of {10/n:.3g} at the smallest, not 0.01: calibrate with at least 1000, '
                                           'or identify at a larger `far` or with a `threshold`']  # warned when calibrating, not at identify time
    assert gallery.smallest_far == pytest.approx(10/n)
    with pytest.raises(ValueError, match='larger FAR|more strangers'): learn.identify(gallery, probes, far=1e-2)
    labels,sims = learn.identify(gallery, probes, far=gallery.smallest_far)
    assert len(labels) == len(probes) and all(l is None or l in enrolled for l in labels)
