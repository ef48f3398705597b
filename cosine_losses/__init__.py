__version__ = "0.0.1"

# `load_learner` restores a learner but not the methods modules add to fastai's `Learner` (`get_embeddings`, `gallery`, `identify`,
# `max_cosine`). Unpickling a cosine learner imports this package (its head and loss live here), and so these modules: see gallery.html.
from . import gallery as _gallery
