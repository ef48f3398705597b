__version__ = "0.0.1"

# `import cosine_losses` imports neither torch nor fastai: the gallery, its calibration and `OnnxEmbedder` run on numpy and onnxruntime.
# `load_learner` restores a learner but not the methods `learner_gallery` adds to fastai's `Learner` (`embed_items`, `gallery`, `identify`,
# `max_cosine`, `export_onnx`). So every submodule is loaded through `_Loader`, which, when the outermost import of one of them ends with
# fastai's `Learner` loaded, imports `learner_gallery`: unpickling a cosine learner imports `heads`, `learner`, ... and brings the methods,
# and no module imports a higher one mid-import (no cycle). See learner_gallery.html.
import importlib, importlib.abc, importlib.machinery, sys

class _Loader(importlib.abc.Loader):
    "A submodule's own loader, then `learner_gallery` when the outermost import of the package ends and fastai's `Learner` is loaded"
    depth = 0  # imports of the package's submodules under way, nested
    def __init__(self, loader): self.loader = loader
    def __getattr__(self, k): return getattr(self.loader, k)  # get_source, get_filename, ...: for inspect, linecache, nbdev
    def create_module(self, spec): return self.loader.create_module(spec)
    def exec_module(self, module):
        _Loader.depth += 1
        try: self.loader.exec_module(module)
        finally: _Loader.depth -= 1
        if not _Loader.depth and 'fastai.learner' in sys.modules and f'{__name__}.learner_gallery' not in sys.modules:
            import warnings
            with warnings.catch_warnings():  # fastai.layers' import-time `torch.jit.script` warning is not ours: the commands stay quiet
                warnings.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning)
                importlib.import_module(f'{__name__}.learner_gallery')

class _Finder(importlib.abc.MetaPathFinder):
    "Finds the package's submodules as Python does, to load them with `_Loader`"
    def find_spec(self, name, path=None, target=None):
        if not name.startswith(f'{__name__}.') or name.count('.') != 1: return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None and not isinstance(spec.loader, _Loader): spec.loader = _Loader(spec.loader)
        return spec

if not any(isinstance(f, _Finder) for f in sys.meta_path): sys.meta_path.insert(0, _Finder())
