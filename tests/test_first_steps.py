"The README's first steps as a new user takes them: a pretrained body offline, saving next to the data, a quiet import."
import socket, subprocess, sys
from urllib.error import URLError
from unittest.mock import patch
import pytest
from torchvision.models import resnet18
from cosine_losses.data import folder_dls, synthetic_folder
from cosine_losses.learner import cosine_learner, softmax_learner

def _offline(url, dst, *args, **kwargs): raise URLError(socket.gaierror(-2, "Name or service not known"))  # as offline

@pytest.mark.parametrize('make', [cosine_learner, softmax_learner])
def test_pretrained_offline_says_what_to_do(tmp_path, monkeypatch, make):
    synthetic_folder(tmp_path/'fruit', n=2)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path/'torch'))  # empty: no weights cached, whatever this machine holds
    dls = folder_dls(tmp_path/'fruit', size=24)
    with patch('torch.hub.download_url_to_file', _offline), pytest.raises(ConnectionError) as e: make(dls, resnet18)
    msg = str(e.value)  # not urllib's bare `URLError: <urlopen error [Errno -2] Name or service not known>`
    assert 'pretrained weights of resnet18 (ResNet18_Weights.IMAGENET1K_V1) could not be downloaded' in msg, msg
    assert 'Name or service not known' in msg, msg
    assert f"{tmp_path/'torch'/'hub'/'checkpoints'} (under TORCH_HOME)" in msg and 'put resnet18-f37072fd.pth there' in msg, msg
    assert 'https://download.pytorch.org/models/resnet18-f37072fd.pth' in msg and '`pretrained=False`' in msg, msg

def test_learner_of_a_folder_saves_and_exports_into_it(tmp_path, monkeypatch):
    synthetic_folder(tmp_path/'fruit', n=2)
    (tmp_path/'cwd').mkdir(); monkeypatch.chdir(tmp_path/'cwd')
    learn = cosine_learner(folder_dls(tmp_path/'fruit', size=24, bs=4), emb_size=8)
    assert learn.path == tmp_path/'fruit'
    learn.save('first'); learn.export()
    assert (tmp_path/'fruit'/'models'/'first.pth').is_file() and (tmp_path/'fruit'/'export.pkl').is_file()
    assert not any((tmp_path/'cwd').iterdir())  # nothing in the working directory

def test_import_does_not_load_accelerate():
    "fastai.distributed imports accelerate, which imports tqdm.auto: `TqdmWarning: IProgress not found` in a notebook without ipywidgets"
    code = ("import sys, cosine_losses.learner, cosine_losses.data, cosine_losses.checkpoint, cosine_losses.splits, cosine_losses.openset, cosine_losses.interpret; "
            "bad = [m for m in ('accelerate', 'fastai.distributed', 'tqdm.auto') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
