"""Angular-margin losses (SphereFace, ArcFace, CosFace and their combination) for fastai

Modules:

- `cosine_losses.all`: `from cosine_losses.all import *`: the package's training and recognition side, as `fastai.vision.all` is fastai's."""

__version__ = "0.0.1"
