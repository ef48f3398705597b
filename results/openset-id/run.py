"""The open-set comparison with identification metrics: the runs of
`cosine-compare --seen 5 --losses softmax arcface cosface sphereface combined --seeds 5 --epochs 5` on MNIST and Fashion-MNIST
(same `train_one`, same seeds), each run's unseen embeddings kept in EMB_DIR for `transfer.py`. Resumes: finished runs are skipped.

    COSINE_LOSSES_MNIST=... python results/openset-id/run.py EMB_DIR"""
import sys, torch
from pathlib import Path
from fastai.vision.all import Callback
from cosine_losses.openset import load_dls, embed
from cosine_losses.compare import train_one

class KeepUnseen(Callback):
    order = 100
    def after_fit(self): self.emb = embed(self.model, self.dls.unseen)

emb_dir,here = Path(sys.argv[1]),Path(__file__).resolve().parent
emb_dir.mkdir(parents=True, exist_ok=True)
all_dls = {name: load_dls(data, bs=256, seen=5) for name,data in dict(mnist=None, fashion='/usr/share/datasets/fashion-mnist').items()}
for seed in range(5):  # seeds outermost: whatever is done when stopped covers every loss and data set
    for name,dls in all_dls.items():
        out = here/name; out.mkdir(exist_ok=True)
        for loss in 'softmax','arcface','cosface','sphereface','combined':
            f = emb_dir/f'{name}_{loss}_{seed}.pt'
            if f.exists(): continue
            cb = KeepUnseen()
            rows = train_one(dls, loss, 5, seed, 3e-2, cbs=[cb], quiet=True).assign(bs=256)
            rows.to_csv(out/'epochs.csv', mode='a', header=not (out/'epochs.csv').exists(), index=False)
            torch.save(cb.emb, f)
