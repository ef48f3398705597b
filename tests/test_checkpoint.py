"`Checkpoint`: fits killed with SIGKILL at a random batch, or while writing a checkpoint, and run again end bit-identical to uninterrupted fits."
import os, random, signal, subprocess, sys
from pathlib import Path
import pytest, torch

WORKER = str(Path(__file__).parent/'checkpoint_worker.py')

def _run(out, mnist, loss, kill=None):
    "checkpoint_worker.py as a real process (2 gloo processes under torchrun for 'sharded'): its return code and output"
    env = {**os.environ, 'ACCELERATE_USE_CPU': '1', 'OMP_NUM_THREADS': '1'}
    args = [WORKER, str(out), str(mnist), loss, *([str(kill)] if kill else [])]
    cmd = [sys.executable, *(['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2'] if loss == 'sharded' else []), *args]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try: o,_ = p.communicate(timeout=600)  # a bound for a hung process only: the fits take seconds
    except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL); raise
    return p.returncode,o

def _final(out, r=0): return torch.load(Path(out)/f'final-rank{r}.pt', weights_only=False)

def _same(a, b) -> bool:
    "Equal to the bit: tensors with `torch.equal`, the rest with `==`, recursively"
    if isinstance(a, torch.Tensor): return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict): return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return len(a) == len(b) and all(_same(x, y) for x,y in zip(a, b))
    return a == b

def _last_save(kill, n_iter, every):
    "The last step saved before the kill after step `kill`: every `every` batches within an epoch, and at each epoch's end"
    return max(s for s in range(1, kill) if s % n_iter == 0 or (s % n_iter) % every == 0)

@pytest.fixture(scope='module')
def reference(tmp_path_factory, real_mnist):
    "The uninterrupted fits"
    res = {}
    for loss in 'combined','curricularface','sharded':
        out = tmp_path_factory.mktemp(f'ref_{loss}')
        rc,o = _run(out, real_mnist, loss)
        assert rc == 0, o[-3000:]
        res[loss] = [_final(out, r) for r in range(2 if loss == 'sharded' else 1)]
        assert res[loss][0]['resumed'] is None
    return res

# (loss, batches per epoch and rank, `every`): 3 epochs; the kill at a seeded random step in epochs 1 and 2, not a checkpoint's
CASES = {'combined': (10, 4), 'curricularface': (10, 4), 'sharded': (5, 2)}

@pytest.mark.parametrize('loss', CASES)
def test_killed_at_a_random_batch_resumes_bit_identical(loss, reference, real_mnist, tmp_path):
    n_iter,every = CASES[loss]
    kill = random.Random(f'checkpoint-{loss}').choice([s for s in range(n_iter+1, 3*n_iter) if s % n_iter and (s % n_iter) % every])
    rc,o = _run(tmp_path, real_mnist, loss, kill)
    assert rc != 0 and not list(tmp_path.glob('final-*')), o[-3000:]  # killed before the end
    ranks = 2 if loss == 'sharded' else 1
    saved = sorted(f.name for f in (tmp_path/'models').iterdir())
    assert len(saved) == ranks and all(f'step{_last_save(kill, n_iter, every):09d}' in f for f in saved), (kill, saved)  # only the last
    rc,o = _run(tmp_path, real_mnist, loss)  # the same command again
    assert rc == 0, o[-3000:]
    for r in range(ranks):
        ref,res = reference[loss][r],_final(tmp_path, r)
        assert res['resumed'] == _last_save(kill, n_iter, every)
        for k in 'model','opt','loss','gen','values','losses':  # weights, optimiser state (each rank's centres' too), running statistics, records
            assert _same(ref[k], res[k]), (loss, r, k, kill)
    if loss == 'curricularface': assert res['loss']['t'] != 0
    if loss == 'sharded': assert not _same(_final(tmp_path, 0)['model'], _final(tmp_path, 1)['model'])  # each rank its own block

def test_killed_while_writing_a_checkpoint(reference, real_mnist, tmp_path):
    "Killed halfway through its 4th checkpoint (after batch 4 of epoch 1, step 14): the 3rd (step 10) loads and the end is the same"
    rc,o = _run(tmp_path, real_mnist, 'curricularface', 'save:4')
    assert rc != 0, o[-3000:]
    names = sorted(f.name for f in (tmp_path/'models').iterdir())
    assert names == ['checkpoint-step000000010.pth', 'checkpoint-step000000014.pth.tmp'], names
    with pytest.raises(Exception): torch.load(tmp_path/'models'/names[1], weights_only=False)  # the half-written file is not a checkpoint
    rc,o = _run(tmp_path, real_mnist, 'curricularface')
    assert rc == 0, o[-3000:]
    res = _final(tmp_path)
    assert res['resumed'] == 10
    for k in 'model','opt','loss','values','losses': assert _same(reference['curricularface'][0][k], res[k]), k

def test_killed_compare_resumes_the_run_in_flight(real_mnist, tmp_path):
    "A compare killed in its second run's second epoch: rerun, it trains neither the first run nor that run's first epoch again, and ends the same"
    import pandas as pd
    ref,cut = tmp_path/'ref',tmp_path/'cut'
    for d in ref,cut: d.mkdir()
    assert _run(ref, real_mnist, 'compare')[0] == 0
    rc,o = _run(cut, real_mnist, 'compare', 3)
    assert rc != 0 and len(pd.read_csv(cut/'cmp'/'epochs.csv')) == 3, o[-3000:]  # the first run is recorded, the second is not
    assert [f.name for f in (cut/'cmp'/'checkpoints').iterdir()] == ['curricularface_0_3_0.03_32']
    rc,o = _run(cut, real_mnist, 'compare')
    assert rc == 0, o[-3000:]
    pid = lambda l: l.split()[0]
    lines = (cut/'trained.txt').read_text().splitlines()
    first = pid(lines[0])
    assert [l.split()[1:] for l in lines if pid(l) != first] == [['CurricularFaceLoss', '1'], ['CurricularFaceLoss', '2']]
    a,b = pd.read_csv(ref/'cmp'/'epochs.csv'),pd.read_csv(cut/'cmp'/'epochs.csv')
    pd.testing.assert_frame_equal(a.drop(columns='seconds'), b.drop(columns='seconds'), check_exact=True)
    assert not (cut/'cmp'/'checkpoints').exists()
