"""Angular-margin losses (SphereFace, ArcFace, CosFace and their combination) for fastai

Modules:

- `cosine_losses.all`: `from cosine_losses.all import *`: the package's training and recognition side, as `fastai.vision.all` is fastai's."""

__version__ = "0.0.1"

# `import cosine_losses` imports neither torch nor fastai: the gallery, its calibration and `OnnxEmbedder` run on numpy and onnxruntime.
# `from cosine_losses.all import *` brings the training side, `learn.embed_items` and the other methods `learner_gallery` adds to `Learner`.
