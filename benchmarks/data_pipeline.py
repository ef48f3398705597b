"""Training throughput on MNIST with the paper's CNN: `mnist_dls` (in-memory tensors) against fastai's usual pipeline
(`ImageDataLoaders.from_folder` on the `mnist_png` layout, built in a temporary folder from the IDX files), same model,
batch size and cosine_learner. Prints seconds per epoch of each, side by side, and where the time goes: a pass over
the data alone, the same training steps in a bare PyTorch loop, and fastai's own per-batch cost (the difference).

    python benchmarks/data_pipeline.py [--data PATH] [--n-train 20000] [--reps 2] [--threads 1]
"""
import cProfile, io, pstats, tempfile, time
from pathlib import Path
import torch
from PIL import Image
from fastcore.script import call_parse
from fastai.vision.all import ImageDataLoaders, PILImageBW, set_seed, Normalize
from cosine_losses.data import mnist_dls, read_idx_folder, mnist_path
from cosine_losses.learner import cosine_learner

def write_png_tree(path, n_train, n_valid, data):
    "fastai's mnist_png layout (training/<label>/i.png, testing/<label>/i.png) from the IDX files"
    xt,yt,xv,yv = read_idx_folder(mnist_path(data))
    for split,x,y in (('training', xt[:n_train], yt[:n_train]), ('testing', xv[:n_valid], yv[:n_valid])):
        for c in range(10): (path/split/str(c)).mkdir(parents=True, exist_ok=True)
        for i,(img,lbl) in enumerate(zip(x, y.tolist())): Image.fromarray(img.numpy()).save(path/split/str(lbl)/f'{i}.png')

def data_pass(dl):
    t = time.perf_counter()
    for xb,yb in dl: pass
    return time.perf_counter() - t

def bare_loop(learn):
    "The same forward, loss, backward and step as fastai's loop, without its callbacks"
    model,lf,opt = learn.model,learn.loss_func,torch.optim.Adam(learn.model.parameters(), 1e-3)
    batches = list(learn.dls.train)
    model.train(); t = time.perf_counter()
    for xb,yb in batches:
        lf(model(xb), yb).backward(); opt.step(); opt.zero_grad()
    return time.perf_counter() - t

def epoch(learn):
    t = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    return time.perf_counter() - t

@call_parse
def main(data:str=None, # MNIST folder; default $COSINE_LOSSES_MNIST
         n_train:int=20000, # training images in both pipelines (PNG writing and decoding is slow)
         n_valid:int=2000, # validation images
         bs:int=256, # batch size
         reps:int=2, # epochs timed per pipeline, interleaved
         threads:int=1, # torch intra-op threads
         profile:bool=False): # also print the top functions (cProfile, by own time) of one data pass per pipeline
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter(); write_png_tree(Path(d), n_train, n_valid, data)
        print(f'wrote {n_train + n_valid} PNGs in {time.perf_counter()-t:.1f} s')
        ours = mnist_dls(data, bs=bs, n_train=n_train, n_valid=n_valid)
        mean,std = ours.after_batch.fs[-1].mean.flatten().item(),ours.after_batch.fs[-1].std.flatten().item()
        folder = ImageDataLoaders.from_folder(d, train='training', valid='testing', bs=bs, img_cls=PILImageBW, num_workers=0,
                                              batch_tfms=Normalize.from_stats(mean, std))
        learns = {}
        for name,dls in (('mnist_dls', ours), ('from_folder', folder)):
            set_seed(0); learns[name] = cosine_learner(dls, n_in=1)
        times = {k: {'epoch': [], 'data': [], 'bare': []} for k in learns}
        for _ in range(reps):  # interleaved, so both pipelines see the same machine load
            for k,l in learns.items():
                times[k]['epoch'].append(epoch(l)); times[k]['data'].append(data_pass(l.dls.train)); times[k]['bare'].append(bare_loop(l))
        best = {k: {m: min(v) for m,v in d.items()} for k,d in times.items()}
        sec = {k: b['epoch'] for k,b in best.items()}
        print(f'\nseconds per epoch ({n_train} training + {n_valid} validation images, bs={bs}, threads={threads}, best of {reps}):')
        for k in learns: print(f'  {k:12s} {sec[k]:7.2f} s')
        print(f'  ratio from_folder / mnist_dls: {sec["from_folder"]/sec["mnist_dls"]:.1f}x')
        print('\nwhere the time goes (seconds, best of each):')
        for k,b in best.items():
            print(f'  {k:12s} data only {b["data"]:6.2f}   bare PyTorch steps on cached batches {b["bare"]:6.2f}   '
                  f'fastai epoch {b["epoch"]:6.2f}   rest (fastai loop, validation) {b["epoch"]-b["data"]-b["bare"]:6.2f}')
        if profile:
            for k,l in learns.items():
                pr = cProfile.Profile(); pr.enable(); data_pass(l.dls.train); pr.disable()
                s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats('tottime').print_stats(8)
                print(f'\n{k}: one data pass, top functions by own time\n' + '\n'.join(s.getvalue().splitlines()[6:18]))
