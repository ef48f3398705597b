"The console commands as a user meets them: no warning noise at start, one line on Ctrl-C, and the same command resumes."
import os, re, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest
from optuna.trial import TrialState
from cosine_losses.data import synthetic_idx, synthetic_folder
from cosine_losses.experiments.sweep import open_study

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
    # the paper's CNN: resnet18's BatchNorm after 7 steps embeds every validation image in one direction, and the watch fails such runs
    r = subprocess.run([_exe('cosine-sweep'), '--data', str(tmp_path/'fruit'), '--size', '32', '--seen', 'fig', 'apple', 'cherry',
                        '--unseen-split', 'all', '--m2', '0.3', '0.5', '--no-softmax', '--epochs', '1', '--seeds', '1', '--bs', '4', '--rank', 'map_at_r',
                        '--out', str(out)], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '6 classes: 3 seen (fig, apple, cherry); 3 unseen (banana, damson, elder)' in r.stdout, r.stdout
    summ = pd.read_csv(out/'summary.csv')
    assert len(summ) == 2 and summ.map_at_r.is_monotonic_decreasing and summ.map_at_r.between(0, 100).all()
    assert pd.read_csv(out/'classes.csv').unseen.tolist() == [0]*3 + [12]*3

def test_help_has_examples_and_imports_neither_torch_nor_fastai():
    for cmd in 'cosine-compare', 'cosine-sweep', 'cosine-gallery':
        r = subprocess.run([_exe(cmd), '--help'], capture_output=True, text=True, env=ENV)
        assert r.returncode == 0 and f'examples:\n  {cmd} ' in r.stdout, r.stdout[-1500:]
    code = ("import sys; sys.argv = ['cosine-gallery', '--help']\nfrom cosine_losses.cli import cosine_gallery\ntry: cosine_gallery()\n"
            "except SystemExit: pass\nprint([m for m in ('torch', 'fastai', 'optuna') if m in sys.modules])")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=ENV)
    assert r.stdout.strip().splitlines()[-1] == '[]', r.stdout[-500:] + r.stderr[-2000:]  # seconds of import for a --help (or an ONNX model)

def test_compare_says_what_it_ran(tmp_path):
    _fruit_folder(tmp_path/'fruit')
    out = tmp_path/'out'
    r = subprocess.run([_exe('cosine-compare'), '--data', str(tmp_path/'fruit'), '--arch', 'resnet18', '--size', '32', '--seen', '3', '--epochs', '1',
                        '--seeds', '1', '--losses', 'softmax', '--sheet', '--out', str(out)], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'batch size 8, not 256: 47 training images make 5 steps an epoch at 8, 0 at 256; --bs sets it' in r.stdout, r.stdout
    assert '\r' not in r.stdout and 'train_loss' in r.stdout  # stdout is a pipe: the table of epochs, no progress bars
    assert '| loss | seen validation accuracy % | unseen MAP@R % |' in r.stdout and '±' not in r.stdout, r.stdout  # one seed: no "± 0.00"
    page = (out/'sheet.html').read_text()
    assert '<title>softmax on fruit</title>' in page
    for k,v in (('command', f"cosine-compare --data {tmp_path/'fruit'} --arch resnet18"), ('data', f"{tmp_path/'fruit'}: 6 classes (3 seen), 47 training"),
                ('architecture', 'resnet18, from random weights'), ('input size', '3 × 32 × 32'), ('learning rate', '0.03'), ('epochs', '1'),
                ('batch size', '8 (5 steps an epoch)'), ('seeds', '0'), ('cosine_losses', '0.')):
        assert f'<tr><th>{k}</th><td>{v}' in page, (k, page[:3000])

def test_compare_counts_a_handful_of_steps_as_failed(tmp_path, capsys):
    from cosine_losses.cli import cosine_compare
    _fruit_folder(tmp_path/'fruit')
    cosine_compare(data=str(tmp_path/'fruit'), arch='resnet18', size=32, seen=['3'], losses=['softmax'], epochs=1, seeds=1, bs=32, out=str(tmp_path/'out'))
    o,e = capsys.readouterr()
    assert 'warning: --bs 32 leaves 1 step an epoch of 47 training images, too few to train well: try --bs 8 (5 steps)' in e, e
    assert 'run 1/1: softmax, seed 0 failed, not counted as a result: ' in o, o  # which rule says so: `_why_failed`'s tests in 05_compare
    assert '| softmax | did not learn | did not learn' in o and '0 (+1 failed)' in o, o

def test_gallery_refuses_a_flat_folder_counts_what_is_new_and_names_the_smallest_far(tmp_path, capsys):
    import shutil as sh
    from fastai.vision.all import ImageDataLoaders, Resize
    from fastcore.script import CliError
    from cosine_losses.learner import cosine_learner
    from cosine_losses.cli import cosine_gallery
    synthetic_folder(tmp_path/'train', FRUIT[:3], n=4)
    dls = ImageDataLoaders.from_folder(tmp_path/'train', valid_pct=.25, seed=0, item_tfms=Resize(32), bs=4)
    cosine_learner(dls).export(tmp_path/'model.pkl')  # untrained: the messages are the point
    people,flat,g = tmp_path/'people',tmp_path/'flat',str(tmp_path/'g.gallery')
    files = synthetic_folder(people, FRUIT[3:6], n=4, seed=1)
    flat.mkdir(); [sh.copy(f, flat/f'{f.parent.name}{f.name}') for f in files[:4]]
    enrol = lambda folder: cosine_gallery('enrol', str(tmp_path/'model.pkl'), str(folder), gallery=g, cpu=True)
    with pytest.raises(CliError, match=rf"{flat} has 4 images directly in it \(damson0.png, ...\): enrol takes each image's class from the folder it is in; "
                                       rf"put them in one folder per class, {flat}/<class>/, and enrol {flat} again"): enrol(flat)
    assert not Path(g).exists()  # refused before anything was written
    capsys.readouterr(); enrol(people); o = capsys.readouterr().out
    assert f'enrolled 12 images of 3 classes into {g}\n' in o, o
    assert (f'calibrated on 12 strangers (the enrolled images, each class a stranger to the others): identify --far can go down to 0.833; '
            'a smaller FAR f needs 10/f strangers (--calibrate)') in o, o
    enrol(people); o = capsys.readouterr().out
    assert f'nothing new: the 12 images of {people} were all in {g} already (embedded again); it holds 12 images of 3 classes' in o, o
    synthetic_folder(people, ['grape'], n=4, seed=2); enrol(people); o = capsys.readouterr().out
    assert f'enrolled 16 images of 4 classes into {g}: 4 new, 12 already there (embedded again); it holds 16 images of 4 classes' in o, o
    with pytest.raises(CliError) as e: cosine_gallery('identify', str(tmp_path/'model.pkl'), str(people), gallery=g, far=.01)
    assert str(e.value) == (f'{g}: its 16 strangers cannot resolve FAR 0.01; the smallest they resolve is 0.625. Pass --far 0.625 or larger, '
                            'or --threshold, or enrol again with --calibrate FOLDER of 1000 strangers at least (images of classes neither trained on nor enrolled)')

def _help_parts(text:str) -> dict:
    "A command's `--help` as what a reader meets, wrapping aside: the options named in the usage, the description, each option's help, the examples"
    usage,rest = text.split('\n\n', 1)
    desc,rest = rest.split('\n\noptions:\n', 1)
    opts,examples = rest.split('\n\nexamples:\n', 1)
    entries,cur = {},None
    for l in opts.splitlines():
        if l.startswith('  -'): cur = l.split()[0]
        entries[cur] = entries.get(cur, '') + ' ' + (l.split(None, 1)[1] if l.startswith('  -') else l)
    return dict(usage=sorted(re.findall(r'\[(--?[\w-]+)', usage)), desc=desc, examples=examples.rsplit('\n\ncosine_losses ', 1)[0],
                options={k: ' '.join(v.split()) for k,v in entries.items()})

@pytest.mark.parametrize('cmd', ['cosine-compare', 'cosine-sweep'])
def test_help_lists_every_option_with_its_text(cmd):
    "The shared options, declared once, are in each command's `--help` with the same text and default as the command's own were (tests/cli_help)"
    r = subprocess.run([_exe(cmd), '--help'], capture_output=True, text=True, env={**ENV, 'COLUMNS': '100'})
    assert r.returncode == 0, r.stderr[-2000:]
    new,old = _help_parts(r.stdout),_help_parts((Path(__file__).parent/'cli_help'/f'{cmd}.txt').read_text())
    assert new == old, (new, old)
    assert len(new['options']) == (21 if cmd == 'cosine-compare' else 29) and '(default: 0.2)' in new['options']['--valid-pct']

def test_cosine_keys_prints_a_key_once_and_keeps_only_its_hash(tmp_path):
    "`cosine-keys add` prints the key on stdout once; `list` shows names, scopes and collections, never a key or hash; `revoke` ends it"
    from cosine_losses.recognition.keys import Denied, KeyStore
    run = lambda *a: subprocess.run([_exe('cosine-keys'), *a, '--keys', str(tmp_path/'keys.json')], capture_output=True, text=True, env=ENV, timeout=60)
    r = run('add', 'door', '--scope', 'read', '--collection', 'faces')
    assert r.returncode == 0 and "the read key 'door' for collection 'faces': shown this once" in r.stderr, r.stderr
    key = r.stdout.strip()
    assert re.fullmatch(r'[0-9a-f]{8}\.[\w-]{43}', key)  # an id, then 256 random bits
    assert run('add', 'hr', '--scope', 'write').returncode == 0
    r = run('list')
    assert [l.split('\t')[:3] for l in r.stdout.splitlines()] == [['door', 'read', 'faces'], ['hr', 'write', 'gallery']], r.stdout
    text = (tmp_path/'keys.json').read_text()
    assert key not in text and key.split('.')[1] not in text and key.split('.')[1] not in r.stdout
    assert KeyStore(tmp_path/'keys.json').check(key, 'read', 'faces')['name'] == 'door'
    r = run('add', 'door')
    assert r.returncode != 0 and "a key named 'door' already" in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert run('revoke', 'door').returncode == 0
    with pytest.raises(Denied): KeyStore(tmp_path/'keys.json').check(key, 'read', 'faces')
    r = run('revoke', 'door')
    assert r.returncode != 0 and "no key named 'door'" in r.stderr, r.stderr
