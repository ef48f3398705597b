"""The robustness claim on a data set nothing was tuned on, as a new user meets it: a folder of word-named colour identities,
long-tailed, trained and scored by `cosine-compare` at its defaults.

`constellations`: each identity is a few coloured shapes (ellipses, boxes, triangles) in its own layout, like the parts of a
face; each image of it moves, scales and turns the whole, jitters every part's colour and place, may hide one part, and sits on
a random background with noise. No generator of the package (`mnist_numbers`, `fashion_outfits`, `glyph_identities`) makes these,
and no default was chosen on them. Most identities have 3–5 images, some 8–20 (Zipf-like, as real collections are).

    python benchmarks/held_out.py --out results/robustness/held-out      # writes the folder, then runs cosine-compare on it
"""
import argparse, subprocess, sys, tempfile
from pathlib import Path
import numpy as np
from PIL import Image, ImageDraw

ADJ = 'amber brisk calm dusty eager faint gentle hollow icy jolly keen lucky misty noble odd proud quiet rusty shy tidy'.split()
NOUN = 'badger crane dingo egret ferret gecko heron ibis jackal koala lemur marten newt otter panda quail raven stoat tapir viper'.split()

def counts(n_ids:int, rng) -> np.ndarray:
    "Images per identity: 3–5 for most, a tail up to 20"
    c = rng.integers(3, 6, n_ids)
    tail = rng.random(n_ids) < .2
    c[tail] = np.minimum(20, 5 + rng.zipf(1.6, tail.sum()) * 2)
    return c

def identity(rng) -> list:
    "An identity's parts: (shape, centre x, y in [0, 1], radius, RGB)"
    return [(rng.choice(['ellipse', 'box', 'triangle']), *rng.uniform(.22, .78, 2), rng.uniform(.08, .18), rng.integers(0, 256, 3))
            for _ in range(rng.integers(3, 5))]

def render(parts, rng, size:int=32, k:int=4) -> np.ndarray:
    "One image of an identity: moved, scaled, turned, colours jittered, maybe a part hidden, on a random noisy background"
    S = size*k
    im = Image.new('RGB', (S, S), tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(im)
    ang,sc,(dx,dy) = rng.uniform(-.35, .35),rng.uniform(.85, 1.15),rng.uniform(-.1, .1, 2)
    hide = rng.integers(len(parts)) if rng.random() < .25 else -1
    for j,(shape,x,y,r,rgb) in enumerate(parts):
        if j == hide: continue
        x,y = x - .5 + rng.normal(0, .02),y - .5 + rng.normal(0, .02)
        cx,cy = (.5 + dx + sc*(x*np.cos(ang) - y*np.sin(ang)))*S,(.5 + dy + sc*(x*np.sin(ang) + y*np.cos(ang)))*S
        rr,fill = r*sc*S,tuple(int(v) for v in np.clip(rgb + rng.normal(0, 25, 3), 0, 255))
        if shape == 'ellipse': d.ellipse([cx - rr, cy - .7*rr, cx + rr, cy + .7*rr], fill=fill)
        elif shape == 'box': d.rectangle([cx - rr, cy - rr, cx + rr, cy + rr], fill=fill)
        else: d.polygon([(cx + rr*np.cos(ang + t), cy + rr*np.sin(ang + t)) for t in (0, 2.1, 4.2)], fill=fill)
    a = np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.float32) + rng.normal(0, 10, (size, size, 3))
    return np.clip(a, 0, 255).astype(np.uint8)

def constellations(path, n_ids:int=1000, seed:int=0, size:int=32) -> Path:
    "Write `n_ids` word-named identities, long-tailed, into `path/<name>/<i>.png`"
    rng,path = np.random.default_rng(seed),Path(path)
    for i,c in enumerate(counts(n_ids, rng)):
        parts,d = identity(rng),path/f'{ADJ[i % 20]}_{NOUN[i//20 % 20]}_{i}'
        d.mkdir(parents=True, exist_ok=True)
        for j in range(c): Image.fromarray(render(parts, rng, size)).save(d/f'{j}.png')
    return path

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--n-ids', type=int, default=1000)
    p.add_argument('--folder', help='where to write the images (default: a temporary folder)')
    p.add_argument('--out', default='results/robustness/held-out')
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--arch', default=None, help="a torchvision body (e.g. resnet18, random weights); default the paper's CNN")
    p.add_argument('--losses', nargs='+', default=['softmax', 'arcface', 'cosface', 'sphereface', 'combined'])
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.folder or tmp)/'constellations'
        if not folder.exists(): constellations(folder, a.n_ids)
        cmd = ['cosine-compare', '--data', str(folder), '--size', '32', '--seen', '0.6', '--seen-seed', '0', '--epochs', '10', '--bs', '128',
               '--seeds', str(a.seeds), '--losses', *a.losses, '--out', a.out] + (['--arch', a.arch] if a.arch else [])
        print(' '.join(cmd), flush=True)
        sys.exit(subprocess.call(cmd))
