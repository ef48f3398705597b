"The console commands as a user meets them: no warning noise at start, one line on Ctrl-C, and the same command resumes."
import os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest
from optuna.trial import TrialState
from cosine_losses.data import synthetic_idx, synthetic_folder
from cosine_losses.sweep import open_study

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg'}
JIT_WARNING = '`torch.jit.script` is deprecated'

def _exe(name):
    exe = shutil.which(name)
    if exe is None: pytest.fail(f"console script {name} is not installed: pip install -e .")
    return exe

def test_fastai_import_warns_but_commands_do_not():
    r = subprocess.run([sys.executable, '-c', 'import fastai.vision.all'], capture_output=True, text=True, env=ENV)
    assert JIT_WARNING in r.stderr  # the warning the commands silence is real (else this test proves nothing)
    for cmd in 'cosine-compare', 'cosine-sweep':
        r = subprocess.run([_exe(cmd), '--help'], capture_output=True, text=True, env=ENV)
        assert r.returncode == 0 and '--seen' in r.stdout, r.stderr
        assert 'Warning' not in r.stderr, r.stderr

def _done(db):
    try: return len(open_study(db, 'grid-e2').get_trials(states=(TrialState.COMPLETE,)))
    except Exception: return 0  # the worker has not created the study yet

def test_ctrl_c_in_sweep_is_one_line_and_resumes(tmp_path):
    data,out = synthetic_idx(tmp_path/'data', n_train=1024, n_valid=256),tmp_path/'out'
    cmd = [_exe('cosine-sweep'), '--data', str(data), '--m2', '0.3', '0.5', '--epochs', '2', '--seeds', '2', '--bs', '128', '--out', str(out)]
    # a shell's background jobs (CI started with `&`) ignore SIGINT, and children inherit that: give the command a terminal's default
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while _done(out/'sweep.db') < 1 and p.poll() is None and time.time() < deadline: time.sleep(.5)
    assert p.poll() is None, f"the sweep ended before it could be interrupted: {p.communicate()[1][-2000:]}"
    p.send_signal(signal.SIGINT)
    stdout,stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr[-2000:]
    assert 'Traceback' not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == f"interrupted: the finished runs are kept in {out/'sweep.db'}; run the same command again to resume"
    n = _done(out/'sweep.db')
    assert 1 <= n < 6
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    st = open_study(out/'sweep.db', 'grid-e2')
    done = [tuple(sorted(t.params.items())) for t in st.get_trials(states=(TrialState.COMPLETE,))]
    assert len(done) == 6 and len(set(done)) == 6  # softmax and two margins × two seeds, each exactly once
    assert (out/'summary.csv').exists()

FRUIT = ('apple', 'banana', 'cherry', 'damson', 'elder', 'fig')

def _fruit_folder(path, n=20):
    "RGB PNGs of mixed sizes in class-name folders; returns the files relative to `path` with their classes"
    return [(f'{f.parent.name}/{f.name}', f.parent.name) for f in synthetic_folder(path, FRUIT, n=n)]

def _compare_on(args, out):
    cmd = [_exe('cosine-compare'), *args, '--arch', 'resnet18', '--size', '32', '--seen', '3', '--epochs', '1', '--seeds', '1',
           '--bs', '16', '--losses', 'softmax', 'arcface', '--out', str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout

def _check_compare_out(stdout, out, n_seen_imgs):
    import pandas as pd
    assert '6 classes: 3 seen (apple, banana, cherry); 3 unseen (damson, elder, fig)' in stdout, stdout
    cl,ep = pd.read_csv(out/'classes.csv'),pd.read_csv(out/'epochs.csv')
    assert cl['class'].tolist() == list(FRUIT) and cl.role.tolist() == ['seen']*3 + ['unseen']*3
    assert (cl.train + cl.valid).tolist() == n_seen_imgs + [0]*3 and cl.unseen[:3].sum() == 0 and cl.unseen[3:].sum() > 0
    assert ep.loss.tolist() == ['softmax', 'arcface'] and ep.map_at_r.notna().all() and ep.accuracy.between(0, 1).all()

def test_compare_on_an_image_folder(tmp_path):
    _fruit_folder(tmp_path/'fruit')
    out = tmp_path/'out'
    _check_compare_out(_compare_on(['--data', str(tmp_path/'fruit')], out), out, [20]*3)

def test_compare_on_a_csv(tmp_path):
    import pandas as pd
    rows = _fruit_folder(tmp_path/'fruit')
    pd.DataFrame(rows[::2], columns=['file', 'label']).to_csv(tmp_path/'fruit/listed.csv', index=False)  # every other image
    out = tmp_path/'out'
    _check_compare_out(_compare_on(['--csv', str(tmp_path/'fruit/listed.csv')], out), out, [10]*3)

def test_pretrained_offline_is_a_clear_error(tmp_path):
    _fruit_folder(tmp_path/'fruit', n=2)
    r = subprocess.run([_exe('cosine-compare'), '--data', str(tmp_path/'fruit'), '--arch', 'resnet18', '--pretrained', '--out', str(tmp_path/'o')],
                       capture_output=True, text=True, env={**ENV, 'TORCH_HOME': str(tmp_path/'torch')}, timeout=300)
    assert r.returncode != 0 and 'pretrained weights of resnet18' in r.stderr and 'not in the local cache' in r.stderr, r.stderr[-2000:]

def test_sweep_on_an_image_folder(tmp_path):
    import pandas as pd
    _fruit_folder(tmp_path/'fruit', n=12)
    out = tmp_path/'out'
    r = subprocess.run([_exe('cosine-sweep'), '--data', str(tmp_path/'fruit'), '--arch', 'resnet18', '--size', '32', '--seen', 'fig', 'apple', 'cherry',
                        '--unseen-split', 'all', '--m2', '0.3', '0.5', '--no-softmax', '--epochs', '1', '--seeds', '1', '--bs', '16', '--rank', 'map_at_r',
                        '--out', str(out)], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '6 classes: 3 seen (fig, apple, cherry); 3 unseen (banana, damson, elder)' in r.stdout, r.stdout
    summ = pd.read_csv(out/'summary.csv')
    assert len(summ) == 2 and summ.map_at_r.is_monotonic_decreasing and summ.map_at_r.between(0, 100).all()
    assert pd.read_csv(out/'classes.csv').unseen.tolist() == [0]*3 + [12]*3
