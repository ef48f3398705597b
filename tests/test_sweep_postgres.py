"Sweeps on a real PostgreSQL server: two workers, one killed mid-run and restarted, every run finished exactly once."
import glob, os, shutil, signal, subprocess, sys, tempfile, time
from collections import Counter
from pathlib import Path
import optuna, pytest
from optuna.trial import TrialState
from cosine_losses.experiments.sweep import open_study, job_params, _key

sys.path.insert(0, str(Path(__file__).parent))
from sweep_worker import GRID

WORKER = str(Path(__file__).parent/'sweep_worker.py')
JOBS = lambda seeds: Counter(_key(job_params(c, s)) for c in GRID for s in range(seeds))

@pytest.fixture(scope='module')
def pg_url():
    "A throwaway PostgreSQL server on a Unix socket only (Debian's `postgresql`), stopped and deleted at the end"
    bins = sorted(glob.glob('/usr/lib/postgresql/*/bin/initdb')) or [shutil.which('initdb')]
    if not bins[-1]:
        if os.environ.get('CI'): pytest.fail("PostgreSQL's initdb is required under CI: `apt-get install -y postgresql`")
        pytest.skip("PostgreSQL is not installed (`apt-get install -y postgresql`)")
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix='pg'))  # short: a socket path has at most 107 bytes
    data,sock = root/'data',root
    as_pg = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the `postgres` user, in a folder it owns
        shutil.chown(root, 'postgres', 'postgres')
        as_pg = ['runuser', '-u', 'postgres', '--']
    run = lambda *a: subprocess.run(as_pg + [str(bindir/a[0]), *a[1:]], check=True, capture_output=True, text=True)
    run('initdb', '-D', str(data), '-A', 'trust', '-U', 'postgres')
    run('pg_ctl', '-D', str(data), '-l', str(root/'log'), '-w', '-o', f"-c listen_addresses='' -k {sock} -c fsync=off", 'start')
    try: yield f'postgresql://postgres@/postgres?host={sock}'  # as users write it: SQLAlchemy 2.1 reads it with psycopg 3
    finally:
        run('pg_ctl', '-D', str(data), '-m', 'immediate', 'stop')
        shutil.rmtree(root, ignore_errors=True)

def _start(url, seeds, secs, stall=None):
    return subprocess.Popen([sys.executable, WORKER, url, str(seeds), str(secs), *([str(stall)] if stall else [])], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})

def _done(st):
    "Runs finished once each, and the study; `st` is the test's one `open_study`: each call opens an engine whose connections stay open"
    return Counter(_key(t.params) for t in st.get_trials(states=(TrialState.COMPLETE,))),st

def test_two_workers_one_killed_every_run_once(pg_url):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(pg_url, 't')  # the schema and study exist before the workers race for runs; polled through this one engine
    stall = Path(tempfile.mkdtemp())/'stalled'  # worker 0 hangs inside its first run: killed there for sure, however busy the machine
    ws = [_start(pg_url, 2, 0, stall), _start(pg_url, 2, .05)]
    try:
        deadline = time.time() + 180
        while time.time() < deadline:  # kill worker 0 mid-run, once the other worker has finished a run beside it
            time.sleep(.2)
            for w in ws: assert w.poll() is None, w.stderr.read().decode()[-2000:]
            done,st = _done(study)
            if stall.exists() and sum(done.values()) >= 1: break
        else: pytest.fail('worker 0 never stalled in a run while worker 1 finished one')
        assert any(t.state == TrialState.RUNNING for t in st.trials)
        ws[0].send_signal(signal.SIGKILL); ws[0].wait()
        ws[0] = _start(pg_url, 2, 0)  # restarted: it picks up the killed run once its heartbeat is stale
        for w in ws: assert w.wait(timeout=180) == 0, w.stderr.read().decode()[-2000:]
    finally:
        for w in ws:
            if w.poll() is None: w.kill(); w.wait()
    done,st = _done(study)
    assert done == JOBS(2)  # every (configuration, seed) finished exactly once
    assert any(t.state == TrialState.FAIL for t in st.trials)  # the killed worker's run, failed by its missing heartbeat
    import psycopg  # the study lives in the server: read it back with the driver alone
    with psycopg.connect(host=pg_url.split('host=')[1], user='postgres', dbname='postgres') as con:
        assert con.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0] == 6
