"""Tests of `cosine_losses.data`: IDX and PNG reading, its error messages, the fast batch path against
fastai's per-item path, fastai's tools on the `DataLoaders`, and real MNIST when it is available."""
import gzip, os, struct, subprocess, sys, time
from pathlib import Path
import matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np, pytest, torch, torch.nn as nn
from torch import Tensor
from PIL import Image
from fastai.torch_core import TensorCategory, set_seed
from fastai.vision.core import TensorImageBW
from fastai.learner import Learner, load_learner
from fastai.losses import CrossEntropyLossFlat
from fastai.interpret import ClassificationInterpretation

from cosine_losses import data
from cosine_losses.data import (read_idx, write_idx, read_idx_folder, read_png_folder, ImageRow, ImageRows, ToImageBW,
                                IndexCategorize, TensorBatchDL, pixel_stats, tensor_dls, mnist_path, idx_dls, mnist_dls, MNIST_ENV)

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------------
# Synthetic data
# ----------------------------------------------------------------------------------------------------
def make_idx(path, n_train=60, n_valid=20, gz=True, n_classes=10, hw=(28, 28), seed=0):
    "A small MNIST-like IDX folder; pixels (0,0) and (0,1) of each image hold its index. Returns the four tensors"
    g = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    out = []
    for split, n, off in ('train', n_train, 0), ('t10k', n_valid, n_train):
        x = torch.randint(0, 256, (n, *hw), dtype=torch.uint8, generator=g)
        i = torch.arange(off, off + n)
        x[:, 0, 0], x[:, 0, 1] = i % 256, i // 256
        y = torch.arange(n, dtype=torch.uint8) % n_classes
        write_idx(path/f"{split}-images-idx3-ubyte{'.gz'*gz}", x)
        write_idx(path/f"{split}-labels-idx1-ubyte{'.gz'*gz}", y)
        out += [x, y.long()]
    return out

def make_png(path, n=3, n_classes=3, hw=(28, 28)):
    "fastai's mnist_png layout, `n` images per class and split. Returns what `read_png_folder` should"
    g, out = torch.Generator().manual_seed(1), []
    for split in 'training', 'testing':
        xs, ys = [], []
        for c in range(n_classes):
            (path/split/str(c)).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                x = torch.randint(0, 256, hw, dtype=torch.uint8, generator=g)
                Image.fromarray(x.numpy()).save(path/split/str(c)/f'{i}.png')
                xs.append(x); ys.append(c)
        out += [torch.stack(xs), torch.tensor(ys)]
    return out

def item_ids(dl):
    "Indices (from the two index pixels) and labels of `dl`'s items in batch order, undoing the normalisation exactly"
    norm = dl.after_batch.fs[-1]
    x, y = (torch.cat(o).as_subclass(Tensor) for o in zip(*dl))
    px = ((x*norm.std + norm.mean)*255).round().long()
    return px[:, 0, 0, 0] + 256*px[:, 0, 0, 1], y

@pytest.fixture
def idx_dir(tmp_path):
    ref = make_idx(tmp_path/'idx')
    return tmp_path/'idx', ref

@pytest.fixture
def dls(idx_dir):
    return tensor_dls(*idx_dir[1], bs=16)

# ----------------------------------------------------------------------------------------------------
# IDX
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('ext', ['', '.gz'])
@pytest.mark.parametrize('shape', [(7,), (5, 4, 3), (2, 3, 4, 5)])
def test_idx_round_trip(tmp_path, ext, shape):
    t = torch.randint(0, 256, shape, dtype=torch.uint8)
    write_idx(tmp_path/f'f{ext}', t)
    r = read_idx(tmp_path/f'f{ext}')
    assert r.dtype == torch.uint8 and r.shape == t.shape and torch.equal(r, t)
    assert read_idx(str(tmp_path/f'f{ext}')).equal(t)  # str paths too

def test_idx_header(tmp_path):
    "The header written is the canonical one, so files interoperate with other IDX readers"
    write_idx(tmp_path/'x', torch.zeros(5, 4, 3, dtype=torch.uint8))
    write_idx(tmp_path/'y.gz', torch.zeros(5, dtype=torch.uint8))
    assert (tmp_path/'x').read_bytes()[:16] == struct.pack('>4I', 0x803, 5, 4, 3)
    assert gzip.decompress((tmp_path/'y.gz').read_bytes())[:8] == struct.pack('>2I', 0x801, 5)
    # and a header written by hand, independently of `write_idx`, is read
    (tmp_path/'hand').write_bytes(struct.pack('>4I', 0x803, 2, 1, 3) + bytes(range(6)))
    assert read_idx(tmp_path/'hand').tolist() == [[[0, 1, 2]], [[3, 4, 5]]]

GOOD = struct.pack('>4I', 0x803, 5, 4, 3) + bytes(60)
def _flip_crc(b): b = bytearray(b); b[-8] ^= 1; return bytes(b)

@pytest.mark.parametrize('name,payload,contains', [
    ('magic', b'\0\0\x09\x03' + GOOD[4:], 'magic number 0x00000903'),
    ('magic_png', b'\x89PNG\r\n\x1a\n' + GOOD, 'not an IDX file'),
    ('zero_dims', b'\0\0\x08\x00' + GOOD[4:], 'not an IDX file'),
    ('empty', b'', 'truncated header (0 bytes)'),
    ('header', GOOD[:10], 'truncated header'),
    ('short', GOOD[:-1], 'truncated: shape (5, 4, 3) needs 60 bytes of data, found 59'),
    ('long', GOOD + b'\0', 'too long'),
    ('plain.gz', GOOD, 'not a gzip file'),
    ('cut.gz', gzip.compress(GOOD, mtime=0)[:-9], 'corrupt or not a gzip file'),
    ('crc.gz', _flip_crc(gzip.compress(GOOD, mtime=0)), 'corrupt'),
    ('short.gz', gzip.compress(GOOD[:-1], mtime=0), 'truncated'),
])
def test_corrupt_idx(tmp_path, name, payload, contains):
    f = tmp_path/name
    f.write_bytes(payload)
    with pytest.raises(ValueError) as e: read_idx(f)
    assert str(f) in str(e.value) and contains in str(e.value)

def test_idx_missing_and_bad_write(tmp_path):
    with pytest.raises(FileNotFoundError): read_idx(tmp_path/'missing')
    with pytest.raises(ValueError, match='uint8'): write_idx(tmp_path/'f', torch.zeros(3))
    with pytest.raises(ValueError, match='1 to 255 dims'): write_idx(tmp_path/'f', torch.tensor(3, dtype=torch.uint8))

@pytest.mark.parametrize('gz', [True, False])
def test_read_idx_folder(tmp_path, gz):
    ref = make_idx(tmp_path, gz=gz)
    res = read_idx_folder(tmp_path)
    assert [o.dtype for o in res] == [torch.uint8, torch.int64]*2
    for a, b in zip(res, ref): assert torch.equal(a, b)

def test_idx_folder_errors(tmp_path):
    make_idx(tmp_path)
    fx, fy = tmp_path/'t10k-images-idx3-ubyte.gz', tmp_path/'t10k-labels-idx1-ubyte.gz'
    write_idx(fy, torch.zeros(19, dtype=torch.uint8))
    with pytest.raises(ValueError) as e: read_idx_folder(tmp_path)
    assert str(e.value) == f"{fy} has 19 labels but {fx} has 20 images"
    write_idx(fy, torch.zeros(20, 1, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r'expected labels of shape \(N,\)'): read_idx_folder(tmp_path)
    write_idx(fx, torch.zeros(20, 784, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r'expected images of shape \(N, H, W\)'): read_idx_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match='train-images-idx3-ubyte'): read_idx_folder(tmp_path/'nothing')

def test_idx_folder_prefers_plain_and_custom_prefix(tmp_path):
    ref = make_idx(tmp_path, gz=False)
    (tmp_path/'train-images-idx3-ubyte.gz').write_bytes(b'broken, but never read')
    assert torch.equal(read_idx_folder(tmp_path)[0], ref[0])
    for a in 'images-idx3', 'labels-idx1':
        for s, t in ('train', 'fold1'), ('t10k', 'fold2'): (tmp_path/f'{s}-{a}-ubyte').rename(tmp_path/f'{t}-{a}-ubyte')
    assert torch.equal(read_idx_folder(tmp_path, 'fold1', 'fold2')[3], ref[3])

# ----------------------------------------------------------------------------------------------------
# PNG layout
# ----------------------------------------------------------------------------------------------------
def test_png_folder(tmp_path):
    ref = make_png(tmp_path)
    res = read_png_folder(tmp_path)
    assert [o.dtype for o in res] == [torch.uint8, torch.int64]*2
    for a, b in zip(res, ref): assert torch.equal(a, b)

def test_png_folder_sorts_labels_numerically(tmp_path):
    make_png(tmp_path, n=1, n_classes=12)
    assert read_png_folder(tmp_path)[1].tolist() == list(range(12))  # '10' after '9', not after '1'

def test_png_errors(tmp_path):
    make_png(tmp_path)
    bad = tmp_path/'testing/2/bad.png'
    bad.write_bytes(b'not a png')
    with pytest.raises(ValueError, match=f"{bad}: not a readable image"): read_png_folder(tmp_path)
    Image.new('L', (27, 28)).save(bad)
    with pytest.raises(ValueError, match=rf"{bad} is \(28, 27\)"): read_png_folder(tmp_path)
    bad.unlink()
    with pytest.raises(FileNotFoundError): read_png_folder(tmp_path/'nothing')

def test_png_word_named_class_folders(tmp_path):
    make_png(tmp_path, n=1)
    (tmp_path/'training/cat').mkdir(); Image.new('L', (28, 28), 7).save(tmp_path/'training/cat/0.png')
    xt,yt,xv,yv,vocab = read_png_folder(tmp_path, with_vocab=True)
    assert vocab == ['0', '1', '2', 'cat'] and yt.tolist() == [0, 1, 2, 3] and xt[3].eq(7).all()  # names, not all digits: labels index them

def test_png_rgb_is_refused_not_greyed(tmp_path):
    x = make_png(tmp_path, n=1, n_classes=1)[0]
    Image.fromarray(x[0].numpy()).convert('RGB').save(tmp_path/'training/0/0.png')
    with pytest.raises(TypeError, match=r"0\.png is a colour image \(RGB\).*`folder_dls` keeps colour"): read_png_folder(tmp_path)

# ----------------------------------------------------------------------------------------------------
# Finding MNIST
# ----------------------------------------------------------------------------------------------------
def test_path_resolution(tmp_path, monkeypatch):
    make_idx(tmp_path/'idx'); make_png(tmp_path/'png')
    monkeypatch.setenv(MNIST_ENV, str(tmp_path/'png'))
    assert mnist_path() == tmp_path/'png'
    assert mnist_path(tmp_path/'idx') == tmp_path/'idx'  # the argument comes first
    assert len(mnist_dls().valid_ds) == 9  # png layout from the variable
    assert len(mnist_dls(tmp_path/'idx').valid_ds) == 20  # IDX layout from the argument
    monkeypatch.setenv(MNIST_ENV, str(tmp_path/'nowhere'))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/nowhere \\(from \\${MNIST_ENV}\\) does not exist"): mnist_path()
    with pytest.raises(FileNotFoundError, match=r'\(from path\)'): mnist_path(tmp_path/'nowhere')
    with pytest.raises(FileNotFoundError, match="neither MNIST's IDX files"): mnist_dls(tmp_path/'png/training')

@pytest.mark.parametrize('env', [None, ''])
def test_offline_error(monkeypatch, env):
    def offline(*args, **kwargs): raise ConnectionError('<urlopen error [Errno -3] Temporary failure in name resolution>')
    monkeypatch.setattr(data, 'untar_data', offline)
    if env is None: monkeypatch.delenv(MNIST_ENV, raising=False)
    else: monkeypatch.setenv(MNIST_ENV, env)
    with pytest.raises(FileNotFoundError) as e: mnist_dls()
    msg = str(e.value)
    for s in 'ConnectionError', 'Temporary failure', 'pass `path=`', f'set ${MNIST_ENV}', 'allow the download', 'mnist_png':
        assert s in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__  # one error, not a chained traceback

def test_download_is_used(tmp_path, monkeypatch):
    make_png(tmp_path)
    monkeypatch.setattr(data, 'untar_data', lambda url: tmp_path)
    monkeypatch.delenv(MNIST_ENV, raising=False)
    assert len(mnist_dls().train_ds) == 9

# ----------------------------------------------------------------------------------------------------
# Items and transforms
# ----------------------------------------------------------------------------------------------------
def test_image_rows():
    x, y = torch.randint(0, 256, (5, 4, 3), dtype=torch.uint8), torch.tensor([3, 1, 4, 1, 5])
    rows = ImageRows(x, y)
    assert len(rows) == 5 and rows.iloc is rows
    r = rows[1]
    assert isinstance(r, ImageRow) and torch.equal(r.img, x[1]) and r.label == 1
    assert rows[np.int64(2)].label == 4 and rows[torch.tensor(2)].label == 4
    assert rows[1:3].labels.tolist() == [1, 4] and rows[[4, 0]].labels.tolist() == [5, 3] and len(rows[[]]) == 0
    assert rows[torch.tensor([True, False, True, False, False])].labels.tolist() == [3, 4]
    assert rows[:3].imgs.data_ptr() == rows.imgs.data_ptr()  # slices are views
    assert [int(o.label) for o in rows] == [3, 1, 4, 1, 5]
    with pytest.raises(ValueError): ImageRows(x, y[:4])

def test_to_image_bw(tmp_path):
    img = torch.randint(0, 256, (4, 3), dtype=torch.uint8)
    Image.fromarray(img.numpy()).save(tmp_path/'img.png')
    tfm = ToImageBW()
    for o in img, img.numpy(), Image.fromarray(img.numpy()), img[None], TensorImageBW(img[None]), \
             ImageRow(img, torch.tensor(0)), tmp_path/'img.png', str(tmp_path/'img.png'):
        t = tfm(o)
        assert type(t) is TensorImageBW and t.shape == (1, 4, 3) and t.dtype == torch.uint8 and torch.equal(t[0], img)
    with pytest.raises(TypeError, match='uint8'): tfm(img.float())
    with pytest.raises(TypeError, match=r'\(3, 4, 4\)'): tfm(torch.zeros(3, 4, 4, dtype=torch.uint8))

def test_index_categorize():
    cat = IndexCategorize(['zero', 'one', 'two'])
    assert type(cat(2)) is TensorCategory and cat(torch.tensor(2)) == 2 and cat(np.int64(1)) == 1
    assert cat(ImageRow(torch.zeros(1), torch.tensor(1))) == 1
    assert cat.decode(TensorCategory(2)) == 'two' and list(IndexCategorize(['b', 'a']).vocab) == ['b', 'a']
    with pytest.raises(IndexError, match='3 classes'): cat(3)
    with pytest.raises(IndexError): cat(-1)

def test_pixel_stats():
    x = torch.randint(0, 256, (50, 7, 5), dtype=torch.uint8)
    m, s = pixel_stats(x)
    assert m == pytest.approx(x.double().mean().item()/255, abs=1e-12)
    assert s == pytest.approx(x.double().std(unbiased=False).item()/255, abs=1e-12)

# ----------------------------------------------------------------------------------------------------
# DataLoaders
# ----------------------------------------------------------------------------------------------------
def test_batch(dls, idx_dir):
    xt, yt, xv, yv = idx_dir[1]
    xb, yb = dls.one_batch()
    assert type(xb) is TensorImageBW and type(yb) is TensorCategory
    assert (xb.shape, xb.dtype, yb.shape, yb.dtype) == ((16, 1, 28, 28), torch.float32, (16,), torch.int64)
    assert (dls.c, list(dls.vocab), dls.n_inp) == (10, list(range(10)), 1)
    mean, std = pixel_stats(xt)
    vb = dls.valid.one_batch()[0].as_subclass(Tensor)
    assert torch.allclose(vb, (xv[:16, None].float()/255 - mean)/std, atol=1e-5)
    assert vb.min() >= -mean/std - 1e-5 and vb.max() <= (1 - mean)/std + 1e-5
    assert torch.equal(dls.valid.one_batch()[1], yv[:16])
    assert isinstance(dls.train, TensorBatchDL) and dls.train.fake_l.num_workers == 0

def test_fixed_stats(idx_dir):
    dls = tensor_dls(*idx_dir[1], stats=(0.5, 0.5))
    xb = dls.valid.one_batch()[0]
    assert xb.min() >= -1 and xb.max() <= 1 and xb.max() == pytest.approx(1)

def test_every_item_once(dls):
    ids, labels = item_ids(dls.valid)
    assert ids.tolist() == list(range(60, 80))  # in order
    assert len(dls.train) == 3  # 60 // 16: fastai drops the last partial training batch
    ids, labels = item_ids(dls.train.new(drop_last=False))
    assert sorted(ids.tolist()) == list(range(60)) and ids.tolist() != list(range(60))  # all, shuffled
    assert torch.equal(labels, ids % 10)  # each image keeps its own label

def test_fast_path_matches_per_item(dls, idx_dir, tmp_path):
    xv, yv = idx_dir[1][2:]
    fast = list(dls.valid)
    slow = list(dls.valid.new(after_item=lambda o: o))  # an item transform forces fastai's per-item path
    for (fx, fy), (sx, sy) in zip(fast, slow):
        assert type(fx) is type(sx) and type(fy) is type(sy) and torch.equal(fx, sx) and torch.equal(fy, sy)
    for i, o in enumerate(xv[:4]): Image.fromarray(o.numpy()).save(tmp_path/f'{i}.png')
    for items in (list(xv[:4]), [Image.fromarray(o.numpy()) for o in xv[:4]], [o.numpy() for o in xv[:4]],
                  sorted(tmp_path.glob('*.png')), xv[:4]):
        b = dls.test_dl(items).one_batch()
        assert len(b) == 1 and type(b[0]) is TensorImageBW and torch.equal(b[0], fast[0][0][:4])
    x, y = dls.test_dl(ImageRows(xv[:4], yv[:4]), with_labels=True).one_batch()
    assert torch.equal(x, fast[0][0][:4]) and torch.equal(y, yv[:4])

def test_seed_repeats_order(idx_dir):
    def order(seed):
        set_seed(seed, reproducible=True)
        return item_ids(tensor_dls(*idx_dir[1], bs=16).train)[0].tolist()
    assert order(42) == order(42) != order(43)

def test_vocab(idx_dir):
    names = [f'class{i}' for i in range(10)][::-1]
    dls = tensor_dls(*idx_dir[1], vocab=names)
    assert list(dls.vocab) == names and dls.c == 10
    assert dls.valid.decode_batch(dls.valid.one_batch(), max_n=2).itemgot(1) == ['class9', 'class8']
    assert tensor_dls(*idx_dir[1], vocab=list(range(12))).c == 12
    xt, yt, xv, yv = idx_dir[1]
    with pytest.raises(ValueError, match=r'\[0, 5\)'): tensor_dls(xt, yt, xv, yv, vocab=names[:5])
    with pytest.raises(ValueError, match='got -1 to 9'): tensor_dls(xt, yt, xv, yv - 1)
    with pytest.raises(TypeError, match='x_train must be a uint8'): tensor_dls(xt.float(), yt, xv, yv)
    with pytest.raises(TypeError, match='y_valid must be a tensor of integer labels'): tensor_dls(xt, yt, xv, yv.float())
    with pytest.raises(ValueError, match=r'shape \(60,\), got \(59,\)'): tensor_dls(xt, yt[:-1], xv, yv)
    with pytest.raises(ValueError, match=r'\(28, 28\) but validation images \(28, 27\)'): tensor_dls(xt, yt, xv[..., :27], yv)

def test_idx_dls(tmp_path):
    ref = make_idx(tmp_path, n_classes=3, hw=(8, 6))
    dls = idx_dls(tmp_path, bs=8, vocab=['a', 'b', 'c'], val_bs=5)
    assert dls.train.one_batch()[0].shape == (8, 1, 8, 6) and dls.valid.bs == 5 and list(dls.vocab) == ['a', 'b', 'c']

def test_png_dls(tmp_path):
    make_png(tmp_path)
    dls = mnist_dls(tmp_path, bs=4)
    assert isinstance(dls.train_ds.items, ImageRows)  # decoded once, then batched by indexing
    assert dls.one_batch()[0].shape == (4, 1, 28, 28) and dls.c == 3

# ----------------------------------------------------------------------------------------------------
# fastai's tools
# ----------------------------------------------------------------------------------------------------
def test_learner_tools(idx_dir, tmp_path):
    set_seed(0, reproducible=True)
    xt, yt, xv, yv = idx_dir[1]
    dls = tensor_dls(*idx_dir[1], bs=16)
    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(28*28, 10)), loss_func=CrossEntropyLossFlat())
    learn.fit(1, 1e-3)
    dls.show_batch(max_n=4); learn.show_results(max_n=4)
    pred, idx, probs = learn.predict(xv[0])
    assert pred == str(idx.item()) and probs.shape == (10,)
    assert torch.allclose(learn.predict(Image.fromarray(xv[0].numpy()))[2], probs)
    assert torch.allclose(learn.get_preds()[0][0], probs, atol=1e-6)  # the fast path agrees with predict's
    interp = ClassificationInterpretation.from_learner(learn)
    assert interp.confusion_matrix().sum() == 20
    interp.plot_top_losses(4)  # rebuilds labelled items with `test_dl(items, with_labels=True)`
    plt.close('all')
    learn.export(tmp_path/'export.pkl')
    assert (tmp_path/'export.pkl').stat().st_size < 200_000  # the model and transforms, not the data
    # a fresh process, so the pickle must refer to the module's classes
    code = ("import torch, sys; from fastai.learner import load_learner; "
            "l = load_learner(sys.argv[1]); print(l.predict(torch.load(sys.argv[2]))[2].tolist())")
    torch.save(xv[0].clone(), tmp_path/'x.pt')
    out = subprocess.run([sys.executable, '-c', code, str(tmp_path/'export.pkl'), str(tmp_path/'x.pt')],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert torch.allclose(torch.tensor(eval(out.stdout.strip().splitlines()[-1])), probs, atol=1e-6)

def test_export_small_with_real_size_data(tmp_path):
    "70,000 images of data must not reach the exported file"
    x = torch.zeros(70_000, 28, 28, dtype=torch.uint8)
    dls = tensor_dls(x[:60_000], torch.zeros(60_000, dtype=torch.long), x[60_000:], torch.ones(10_000, dtype=torch.long), stats=(0.1, 0.3))
    Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(28*28, 2)), loss_func=CrossEntropyLossFlat()).export(tmp_path/'e.pkl')
    assert (tmp_path/'e.pkl').stat().st_size < 100_000

# ----------------------------------------------------------------------------------------------------
# Real MNIST
# ----------------------------------------------------------------------------------------------------
def test_real_mnist(real_mnist):
    xt, yt, xv, yv = read_idx_folder(real_mnist)
    assert (xt.shape, xv.shape, yt.shape, yv.shape) == ((60000, 28, 28), (10000, 28, 28), (60000,), (10000,))
    assert yt[0] == 5 and yt[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the canonical first labels
    assert torch.bincount(yt).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(yv).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert pixel_stats(xt) == pytest.approx((0.1307, 0.3081), abs=5e-5)

def test_real_mnist_dls(real_mnist, monkeypatch):
    monkeypatch.setenv(MNIST_ENV, str(real_mnist))
    dls = mnist_dls()
    assert (len(dls.train_ds), len(dls.valid_ds), dls.c, len(dls.train), len(dls.valid)) == (60000, 10000, 10, 234, 40)
    xb, yb = dls.one_batch()
    assert (xb.shape, xb.dtype, yb.shape, yb.dtype) == ((256, 1, 28, 28), torch.float32, (256,), torch.int64)
    assert xb.min().item() == pytest.approx(-0.1307/0.3081, abs=1e-3) and xb.max().item() == pytest.approx((1-0.1307)/0.3081, abs=1e-3)
    assert torch.equal(torch.cat([b[1] for b in dls.valid]), read_idx_folder(real_mnist)[3])  # every test image, once, in order
    start = time.perf_counter()
    n = sum(len(b[1]) for b in dls.train)
    elapsed = time.perf_counter() - start
    print(f"one pass over the training DataLoader: {n} images in {elapsed:.2f}s")
    assert n == 234*256
