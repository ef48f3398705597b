"""Every figure a notebook draws is on its page: the docs site renders the outputs saved in the notebooks and executes nothing.

A code cell draws when a statement it runs (not one inside a `def`, `class` or `lambda`) calls matplotlib (`plt.*`, an axes'
`plot`, `imshow`, `scatter`...), fastai's `show_batch`, `show_results`, `show`, `lr_find` (unless `show_plot=False`)..., a
`plot_*` function, or a function of the package or of the notebook that does one of these. The cells checked are those the
page shows with their outputs (see docs/build.py): not `#| hide`, `#| include: false`, `#| output: false` or `#| eval: false`,
nor a cell that closes its figures with `plt.close`, which keeps them off the page on purpose. Each such cell must have saved an
image (PNG or SVG)."""
import ast, importlib.util, json
from pathlib import Path
import pytest
from fastcore.nbio import does_cell_eval, fm_default_eval, nb_frontmatter
from nbdev.process import NBProcessor

root = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location('docs_build', root/'docs'/'build.py')
docs_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs_build)

IMAGES = {'image/png', 'image/svg+xml'}
# axes' and pandas' drawing methods, fastai's showing ones; `plt.<anything>` draws except these
METHODS = {'plot', 'imshow', 'matshow', 'scatter', 'hist', 'hist2d', 'bar', 'barh', 'pie', 'boxplot', 'violinplot', 'errorbar',
           'fill_between', 'fill_betweenx', 'stem', 'semilogx', 'semilogy', 'loglog', 'contour', 'contourf', 'pcolormesh',
           'hexbin', 'quiver', 'heatmap', 'show', 'show_batch', 'show_results', 'show_image', 'show_images', 'show_titled_image',
           'plot_top_losses', 'plot_confusion_matrix', 'plot_loss', 'plot_lr_find', 'plot_sched'}
PLT_QUIET = {'close', 'rc', 'rc_context', 'rcdefaults', 'style', 'ioff', 'ion', 'switch_backend', 'get_cmap', 'get_fignums',
             'isinteractive'}
# pages whose notebooks still draw figures they do not save: each is reported, and fails once fixed, to leave this set
PENDING = set()

def _name(f):
    "The called name: `f` for `f(...)`, `m` for `x.m(...)`"
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None

def _calls(tree):
    "Calls that run when `tree` runs: those inside a `def`, `class` or `lambda` run only when it is called"
    todo = [tree]
    while todo:
        n = todo.pop()
        if isinstance(n, ast.Call): yield n
        todo += [c for c in ast.iter_child_nodes(n) if not isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))]

def _draws(call, drawers):
    "Does `call` draw, given the names of the functions known to draw?"
    f = call.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in ('plt', 'sns'): return f.attr not in PLT_QUIET
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Attribute) and f.value.attr == 'plot': return True  # df.plot.bar()
    n = _name(f)
    if n == 'scatter' and call.args and isinstance(call.args[0], ast.Constant): return False  # torch's `Tensor.scatter(dim, ...)`
    if n == 'lr_find': return not any(k.arg == 'show_plot' and isinstance(k.value, ast.Constant) and not k.value.value
                                      for k in call.keywords)
    return n is not None and (n in METHODS or n.startswith('plot_') or n in drawers)

def _closes(tree):
    "Does `tree` close figures (`plt.close`)?"
    return any(_name(c.func) == 'close' and isinstance(c.func, ast.Attribute) and _name(c.func.value) == 'plt' for c in _calls(tree))

def _parse(src):
    "`src` as Python, IPython's magics and shell lines left out"
    return ast.parse('\n'.join('' if l.lstrip().startswith(('%', '!')) else l for l in src.splitlines()))

def drawing_functions(trees, known=()) -> set:
    "Names of the functions defined in `trees` that leave a figure open when called, directly or through each other or `known`"
    defs = {d.name: d for t in trees for d in ast.walk(t) if isinstance(d, (ast.FunctionDef, ast.AsyncFunctionDef))}
    defs = {n: d for n,d in defs.items() if not any(_closes(s) for s in d.body)}  # one that closes its figures, to save them, shows none
    res = set()
    while True:
        names = res | (set(known) - set(defs))  # a name the notebook or module defines is its own function
        new = {n for n,d in defs.items() if n not in res and any(_draws(c, names) for s in d.body for c in _calls(s))}
        if not new: return res
        res |= new

def _package_drawers(trees) -> set:
    "Names of the package's functions that draw, each module's own names resolved in it first"
    res = set()
    while True:
        new = set().union(*(drawing_functions([t], res) for t in trees))
        if new <= res: return res
        res |= new

_package = _package_drawers([ast.parse(p.read_text()) for p in sorted((root/'cosine_losses').rglob('*.py'))])

def _shown(nb):
    "Is a code cell of `nb` shown on its page with its outputs?"
    dflt = fm_default_eval(nb_frontmatter(nb))
    def _f(c):
        d = c.directives_ or {}
        return not ('hide' in d or any(d.get(k, '').lower() == 'false' for k in ('include', 'output')) or not does_cell_eval(c, dflt))
    return _f

def bare_figures(path) -> tuple:
    "(ids of the cells of notebook `path` that draw on its page, ids of those that saved no image)"
    nb = NBProcessor(path, rm_directives=False, process=True).nb
    cells = [(c, _parse(c.source)) for c in nb.cells if c.cell_type == 'code']
    local = {d.name for _,t in cells for d in ast.walk(t) if isinstance(d, (ast.FunctionDef, ast.AsyncFunctionDef))}
    drawers = drawing_functions([t for _,t in cells], _package) | (_package - local)
    shown = _shown(nb)
    drawing = [c for c,t in cells if shown(c) and not _closes(t) and any(_draws(call, drawers) for call in _calls(t))]
    return [c.id for c in drawing], [c.id for c in drawing if not any(IMAGES & set(o.get('data', {})) for o in c.get('outputs', []))]

def _pages(): return {n: p for n,p in docs_build.pages().items() if p.exists()}

def test_rule(tmp_path):
    "The rule on a made-up notebook: what draws, what is hidden or closed, what the package draws with"
    from nbformat.v4 import new_notebook, new_code_cell, new_output
    png = new_output('display_data', data={'image/png': 'iVBORw0KGgo=', 'text/plain': '<Figure>'})
    src = ['#| export\ndef helper(ax): ax.plot([1, 2])',                  # a definition draws nothing
           'fig,ax = plt.subplots()\nhelper(ax)',                          # draws (and saved its figure, below)
           'helper(plt.gca())',                                            # draws through the notebook's function: nothing saved
           'for i in range(2): show_identities(x, y, names)',               # a function of the package that draws
           "df.plot.bar(x='a')", 'learn.show_results()', 'x = plot_cmc_curves(c)',
           '#| hide\nplt.plot([1])', '#| output: false\nplt.plot([1])', '#| eval: false\nplt.plot([1])', '#| include: false\nplt.plot([1])',
           'fig = plt.figure()\nplt.close(fig)', 'plt.rcParams.update({})\nmpl = plt.cm.viridis(.5)', 'test_eq(f(lambda: plt.plot()), 1)',
           'y = x.scatter(1, idx, 0.)\nlearn.lr_find(show_plot=False)\nopt.step()']
    nb = new_notebook(cells=[new_code_cell(s, id=f'c{i:07d}') for i,s in enumerate(src)])
    nb.cells[1].outputs = [png]
    (tmp_path/'t.ipynb').write_text(json.dumps(nb))
    drawing, bare = bare_figures(tmp_path/'t.ipynb')
    assert drawing == [f'c{i:07d}' for i in range(1, 7)], drawing
    assert bare == drawing[1:], bare
    assert {'show_identities', 'plot_cmc_curves', 'plot_best', '_show'} <= _package
    assert not {'cmc', 'get_embeddings', 'forward', 'compare', 'theta_target'} & _package  # `compare` closes the figures it saves

@pytest.mark.parametrize('page', sorted(_pages()))
def test_page_shows_its_figures(page):
    "Each shown cell that draws has its figure saved, so the page shows it"
    drawing, bare = bare_figures(_pages()[page])
    if page in PENDING:
        assert drawing, f'{page} draws no figure: take it out of PENDING'
        if not bare: pytest.fail(f'{page} saves every figure it draws now: take it out of PENDING')
        pytest.xfail(f'{page}: cells {bare} draw figures that are not saved (PENDING)')
    assert not bare, f'{page}: cells {bare} draw a figure but saved none; save the notebook with its outputs'
