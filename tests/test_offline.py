"A user's clone: no shared/ folder beside it, no $COSINE_LOSSES_MNIST, no network. Every notebook must still pass (on the stand-in data)."
import os, shutil, subprocess
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def test_notebooks_pass_in_a_clone_without_data(tmp_path):
    files = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True).stdout.decode().split('\0')
    clone = tmp_path/'clone'/'cosine_losses'  # tmp_path/clone has no shared/ beside the repository
    for f in filter(None, files):
        if (ROOT/f).is_file(): (clone/f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT/f, clone/f)
    assert not (clone.parent/'shared').exists()
    env = {k: v for k,v in os.environ.items() if k not in ('COSINE_LOSSES_MNIST', 'CI')}
    env.update(HOME=str(tmp_path/'home'), OMP_NUM_THREADS='1', MPLBACKEND='Agg')  # a fresh ~/.fastai: nothing downloaded before
    r = subprocess.run(['nbdev-test', '--n-workers', '2'], cwd=clone, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
