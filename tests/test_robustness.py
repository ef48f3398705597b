"""Margin losses that train with few steps: on `glyphs-hard` (700 seen codes, 12 training images each) at batches of 256,
`fit_one_cycle(10, 3e-2)` is 350 steps. With fastai's weight decay (0.01) CosFace got 0.62–0.87× softmax's seen accuracy
in 5 of 5 seeds; at `cosine_learner`'s default (0.1) it is level or ahead. One cell of `benchmarks/robustness.py`, run by
the benchmark's own code, seed 0 (where the gap was widest), 2 threads (the count fixes the sums' order, so the run)."""
import sys
from pathlib import Path
import pytest, torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'benchmarks'))
from robustness import FAMILIES, run

@pytest.fixture(scope='module')
def cell():
    "softmax, CosFace at fastai's weight decay and CosFace at the default, on the same data and seed"
    threads,data = torch.get_num_threads(),FAMILIES['glyphs-hard'](1000, 0)
    try:
        go = lambda loss, wd=None: run('glyphs-hard', loss, 0, 3e-2, 256, 2, 1000, 10, data, wd)
        yield dict(softmax=go('softmax'), old=go('cosface', wd=.01), new=go('cosface'))
    finally: torch.set_num_threads(threads)

def _ratios(r, sm): return r['seen_acc']/sm['seen_acc'],r['map_at_r']/sm['map_at_r']

def test_cosface_trains_with_few_steps_at_the_default(cell):
    sm,new = cell['softmax'],cell['new']
    assert not sm['flagged'] and not new['flagged'] and sm['seen_acc'] > 10  # softmax learns: 18 %, 126× chance
    assert min(_ratios(new, sm)) >= .9, (new, sm)

def test_it_did_not_with_fastais_weight_decay(cell):
    "The test above can fail: the same run at wd 0.01 trails softmax"
    assert max(_ratios(cell['old'], cell['softmax'])) < .9, cell
