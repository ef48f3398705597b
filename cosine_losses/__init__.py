__version__ = "0.0.1"

# `load_learner` restores a learner but not the methods modules add to fastai's `Learner` (`get_embeddings`, `gallery`, `identify`,
# `max_cosine`). Unpickling a cosine learner imports this package (its head and loss live here), and so these modules: see gallery.html.
import warnings as _warnings
with _warnings.catch_warnings():  # fastai.layers' import-time `torch.jit.script` warning is not ours: the commands stay quiet (see cli.html)
    _warnings.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning)
    from . import gallery as _gallery
