"""`from cosine_losses.all import *`: the package's training and recognition side, as `fastai.vision.all` is fastai's.

Before `load_learner`, it brings the methods `learner_gallery` adds to fastai's `Learner`: `embed_items`, `gallery`, `identify`,
`max_cosine`, `export_onnx`."""
# Imported by name instead: `distributed` (accelerate, through `fastai.distributed`), `recognition.milvus` (an optional extra), the
# experiments (`cosine_losses.experiments`: optuna loads tqdm.auto's notebook bars) and `cli` (the commands)
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
from .recognition.metrics import *
from .recognition.curves import *
from .splits import *
from .openset import *
from .checkpoint import *
from .interpret import *
from .recognition.gallery import *
from .recognition.calibration import *
from .recognition.embedder import *
from .learner_gallery import *
