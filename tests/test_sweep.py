"Sweeps: every (configuration, seed) runs exactly once, across interruption and across workers."
import os, signal, subprocess, sys, time
from collections import Counter
from pathlib import Path
import pytest
from optuna.trial import TrialState
from cosine_losses.experiments.sweep import margin_sweep, open_study, job_params, _key, config_name, paper_grid
import pandas as pd
from cosine_losses.experiments.report import sweep_results, summarize_sweep, paper_table, sweep_report, read_runs

sys.path.insert(0, str(Path(__file__).parent))
from sweep_worker import synthetic_dls, GRID

WORKER = str(Path(__file__).parent/'sweep_worker.py')
JOBS = lambda seeds: Counter(_key(job_params(c, s)) for c in GRID for s in range(seeds))

def _complete(db):
    st = open_study(db, 't')
    return Counter(_key(t.params) for t in st.get_trials(states=(TrialState.COMPLETE,))),st

def _start(db, seeds, secs, *stall):
    return subprocess.Popen([sys.executable, WORKER, str(db), str(seeds), str(secs), *map(str, stall)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})

def test_tiny_grid_same_code_path(tmp_path):
    st = margin_sweep(synthetic_dls(), GRID, seeds=2, epochs=1, storage=tmp_path/'s.db', study_name='t', emb_size=8, verbose=False)
    done = Counter(_key(t.params) for t in st.get_trials(states=(TrialState.COMPLETE,)))
    assert done == JOBS(2)
    res = sweep_results(st)
    assert len(res) == 6 and set(res.config) == {config_name(c) for c in GRID}
    assert all(len(a) == 1 and 0 <= a[0] <= 100 for a in res.per_epoch)
    summ = summarize_sweep(res)
    pd.testing.assert_frame_equal(summ, sweep_report(st, tmp_path/'out'))
    back = read_runs(tmp_path/'out'/'runs.csv')
    assert back.per_epoch.map(lambda a: round(a[0], 2)).tolist() == res.per_epoch.map(lambda a: round(a[0], 2)).tolist()
    pd.testing.assert_frame_equal(summarize_sweep(back), summ, atol=1e-6, check_dtype=False)
    assert summ.n.tolist() == [2, 2, 2] and (summ['mean'] > 50).all()  # the bands are easy: far above chance (33 %)
    margin_sweep(synthetic_dls(), GRID, seeds=2, epochs=1, storage=tmp_path/'s.db', study_name='t', emb_size=8, verbose=False)
    assert len(open_study(tmp_path/'s.db', 't').trials) == 6  # resumed: nothing trained twice

def test_killed_sweep_resumes_with_every_run_once(tmp_path):
    db = tmp_path/'s.db'
    open_study(db, 't')  # created here first, so polling it below never races the worker's creation of the schema
    stall = tmp_path/'stalled'
    w = _start(db, 2, 0, stall, 2)  # it hangs inside its second run: killed there for sure, however busy the machine
    deadline = time.time() + 120
    while time.time() < deadline and not stall.exists():
        time.sleep(.2)
        assert w.poll() is None, w.stderr.read().decode()[-2000:]
    assert stall.exists(), 'the worker never reached its second run'
    w.send_signal(signal.SIGKILL); w.wait()
    done,st = _complete(db)
    assert sum(done.values()) == 1 and sum(t.state == TrialState.RUNNING for t in st.trials) == 1
    w = _start(db, 2, 0)
    assert w.wait(timeout=180) == 0, w.stderr.read().decode()[-2000:]
    done,st = _complete(db)
    assert done == JOBS(2)  # every run finished exactly once
    assert any(t.state == TrialState.FAIL for t in st.trials)  # the killed one, failed by its missing heartbeat

def test_two_workers_share_one_study(tmp_path):
    db = tmp_path/'s.db'
    open_study(db, 't')  # created once, so the workers race only for runs
    ws = [_start(db, 3, .3) for _ in range(2)]  # runs slow enough that neither worker finishes before the other starts
    for w in ws: assert w.wait(timeout=240) == 0, w.stderr.read().decode()[-2000:]
    done,st = _complete(db)
    assert done == JOBS(3)
    workers = Counter(t.user_attrs.get('pid') for t in st.get_trials(states=(TrialState.COMPLETE,)))
    assert len(workers) == 2, workers  # both did some of the work

def test_paper_grid_and_table():
    g = paper_grid()
    assert len(g) == 41 and sum(c['kind'] == 'softmax' for c in g) == 1
    pt = paper_table()
    assert len(pt.query('epochs == 20')) == 40
    assert {(round(c['m2'], 2), round(c['m3'], 2)) for c in g[1:]} == {(r.m2, r.m3) for r in pt.query('epochs == 20').itertuples()}

def test_tpe_search(tmp_path):
    from cosine_losses.experiments.sweep import margin_search
    st = margin_search(synthetic_dls(), n_trials=3, epochs=1, m2=(.1, .6), m3=(0., .2), storage=tmp_path/'s.db', study_name='tpe', emb_size=8)
    done = st.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3 and all(.1 <= t.params['m2'] <= .6 and 0 <= t.params['m3'] <= .2 for t in done)
    assert all(len(t.user_attrs['accuracy']) == 1 for t in done)
    margin_search(synthetic_dls(), n_trials=3, epochs=1, storage=tmp_path/'s.db', study_name='tpe', emb_size=8)
    assert len(open_study(tmp_path/'s.db', 'tpe').get_trials(states=(TrialState.COMPLETE,))) == 3  # already complete: nothing more

def test_unknown_grid_is_a_clear_error():
    from cosine_losses.cli import cosine_sweep
    with pytest.raises(ValueError, match="'paper'"): cosine_sweep(grid='papr')
