"""`from cosine_losses.all import *`: the package's training and recognition side, as `fastai.vision.all` is fastai's.

Before `load_learner`, it brings the methods `learner_gallery` adds to fastai's `Learner`: `embed_items`, `gallery`, `identify`,
`max_cosine`, `export_onnx`."""
# Imported by name instead: `distributed` (accelerate, through `fastai.distributed`), `sweep` and `report` (optuna, which loads tqdm.auto's
# notebook bars), `milvus` (an optional extra), `cli` (the commands)
from .losses import *
from .family import *
from .heads import *
from .fused import *
from .watch import *
from .data import *
from .identities import *
from .learner import *
from .callbacks import *
from .compile import *
from .metrics import *
from .curves import *
from .splits import *
from .openset import *
from .checkpoint import *
from .interpret import *
from .gallery import *
from .calibration import *
from .embedder import *
from .learner_gallery import *
from .compare import *
