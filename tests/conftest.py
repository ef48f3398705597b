import os
from pathlib import Path
import pytest, torch

# The test machine is small and shared: one intra-op thread is fastest for these tiny tensors.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    "Every test starts from the same RNG state, so random inputs are reproducible"
    torch.manual_seed(0)
    yield


@pytest.fixture(scope='session')
def real_mnist():
    "MNIST's folder from $COSINE_LOSSES_MNIST or ../shared/data/mnist; required under CI, else the test is skipped"
    p = Path(os.environ.get('COSINE_LOSSES_MNIST') or Path(__file__).resolve().parents[2]/'shared/data/mnist')
    if not p.is_dir():
        if os.environ.get('CI'): pytest.fail(f"real MNIST is required under CI: set $COSINE_LOSSES_MNIST (looked in {p})")
        pytest.skip(f"real MNIST not found at {p}; set $COSINE_LOSSES_MNIST")
    return p


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
    "A cosine learner trained briefly on a colour folder of word-named classes of mixed sizes, exported both ways (.pkl and .onnx)"
    from fastai.vision.all import ImageDataLoaders, Resize, set_seed
    from cosine_losses.all import cosine_learner  # and `learn.export_onnx`, `embed_items`, ...: `learner_gallery`, which `all` imports
    from image_folders import WORDS, colour_folder
    d = tmp_path_factory.mktemp('trained')
    dls = ImageDataLoaders.from_folder(colour_folder(d/'train', WORDS[:4], 24, 0), valid_pct=.25, seed=0, item_tfms=Resize(32), bs=16)
    set_seed(0, reproducible=True)
    learn = cosine_learner(dls, m2=.3)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(4, 1e-2)
    learn.export(d/'model.pkl'); learn.export_onnx(d/'model.onnx')
    return learn,d


@pytest.fixture(scope='session')
def milvus_server(tmp_path_factory):
    "A Milvus standalone server (the `milvus` wheel of the dev extra) on loopback, started once at the first test that asks: its URI"
    import shutil
    base,server = tmp_path_factory.mktemp('milvus_server'),None
    try:
        from milvus_server import MilvusServer
        # time ticks every 50 ms, not 200: a strong read waits for the next one. Bounded reads still lag 5 s, as by default
        server = MilvusServer(base, **{'proxy.timeTickInterval': 50})
        uri = server.start()
    except Exception as e:
        if server: server.stop()
        why = (f"the `milvus` wheel is not installed (pip install -e '.[dev]'): {e}" if isinstance(e, ImportError) else
               f"the Milvus server did not start ({e!r}); its logs are in {base/'logs'}")
        if os.environ.get('CI'): pytest.fail(f"CI needs a Milvus server: {why}")
        pytest.skip(why)
    yield uri
    server.stop()
    shutil.rmtree(base, ignore_errors=True)  # its 450 MB of unpacked binaries and its data: pytest keeps three sessions' temporary folders
