"""Throughput of embedding image files: `OnnxEmbedder` (onnxruntime, numpy preprocessing) against `learn.embed_items` (fastai `test_dl`, PyTorch),
side by side in one run on the same files, threads and batch size.

    OMP_NUM_THREADS=1 python benchmarks/onnx_embed.py                 # 2,000 colour PNGs of mixed sizes, resnet18 at 64 × 64
    python benchmarks/onnx_embed.py --n 4000 --arch paper --size 28   # the paper's CNN
"""
import argparse, tempfile, time
from pathlib import Path
import numpy as np, torch
from fastai.vision.all import set_seed
from cosine_losses.data import folder_dls, synthetic_folder
from cosine_losses.learner import arch_from_name, cosine_learner
import cosine_losses.learner_gallery  # learn.embed_items, learn.export_onnx
from cosine_losses.recognition.embedder import OnnxEmbedder

def main(n=2000, arch='resnet18', size=64, bs=64, threads=None):
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        files = synthetic_folder(d/'images', n=-(-n//8), sizes=(48, 96))[:n]  # 8 word-named classes, colour, 48 to 95 pixels a side
        set_seed(0)
        learn = cosine_learner(folder_dls(d/'images', size=size, bs=bs), arch_from_name(arch), pretrained=False)
        emb = OnnxEmbedder(learn.export_onnx(d/'model.onnx'), threads=threads)
        with learn.no_bar(): learn.embed_items(files[:bs], bs); emb(files[:bs], bs)  # warm up both
        t = {}
        for name,f in (('learner', lambda: learn.embed_items(files, bs)[0].numpy()), ('onnx', lambda: emb(files, bs, progress=False))):
            with learn.no_bar():
                t0 = time.perf_counter(); out = f(); t[name] = time.perf_counter() - t0
            t[name + '_emb'] = out
        cos = (t['learner_emb']*t['onnx_emb']).sum(1).min()
        print(f"{n} images ({size}×{size}, {arch}), batch {bs}, {threads} thread(s), torch {torch.__version__}")
        for name in ('learner', 'onnx'): print(f"  {name:8s} {n/t[name]:8.1f} images/s  ({t[name]:.2f} s)")
        print(f"  ratio onnx/learner {t['learner']/t['onnx']:.2f}×; lowest cosine between the two embeddings {cos:.6f}")
        return t['learner']/t['onnx']

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=2000); p.add_argument('--arch', default='resnet18'); p.add_argument('--size', type=int, default=64)
    p.add_argument('--bs', type=int, default=64); p.add_argument('--threads', type=int, default=None)
    a = p.parse_args()
    main(a.n, a.arch, a.size, a.bs, a.threads)
