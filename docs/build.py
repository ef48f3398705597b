"""Build the documentation site from the notebooks: `python docs/build.py` writes it to `_docs/`.

nbdev's own processors turn each notebook into its page (`#| hide` cells dropped, a `show_doc` after each exported
function and class, run to get its signature and docments), backticked names become links to their `show_doc`
heading, and Sphinx with myst-nb renders the saved outputs: nothing else is executed. Each page `X.html` gets a
markdown twin `X.html.md`, the target of the `Docs:` links nbdev writes into the module docstrings."""
import ast, os, re, shutil
from contextlib import contextmanager
from pathlib import Path
from fastcore.nbio import read_nb, write_nb, mk_cell
from fastcore.script import call_parse
from nbdev.config import get_config, nbpath2html
from nbdev.doclinks import nbglob, NbdevLookup
from nbdev.process import NBProcessor
from nbdev.processors import populate_language, add_show_docs, strip_ansi, hide_line, filter_stream_, exec_show_docs, clean_magics, hide_
from myst_parser.mdit_to_docutils.base import github_slugify

docs = Path(__file__).resolve().parent
root = docs.parent

def pages(cfg=None) -> dict:
    "{page name: notebook}: the home page from index.ipynb, then every notebook of `nbs_path` in nbdev's order"
    cfg = cfg or get_config()
    nbs = cfg.path('nbs_path')
    return {'index': cfg.config_path/'index.ipynb',
            **{nbpath2html(p.relative_to(nbs)).with_suffix('').as_posix(): p for p in nbglob(nbs, func=Path)}}

def doc_base(cfg=None) -> str:
    "The URL the site is published at, from pyproject's Documentation URL, ending in /"
    cfg = cfg or get_config()
    return f"{cfg.doc_host}{cfg.doc_baseurl.rstrip('/')}/"

@contextmanager
def _cwd(path):
    old = Path.cwd()
    os.chdir(path)
    try: yield
    finally: os.chdir(old)

_re_showdoc = re.compile(r'^show_doc\(', re.MULTILINE)

class exec_api(exec_show_docs):
    "nbdev's `exec_show_docs` limited to exported, import-only and `show_doc` cells (nbdev also runs tests that import)"
    def __call__(self, cell):
        trees = cell.parsed_() if cell.cell_type == 'code' and cell.source else None
        if trees and not ({'export', 'exports', 'exporti', 'exec_doc'} & set(cell.directives_)
                          or all(isinstance(t, (ast.Import, ast.ImportFrom)) for t in trees) or _re_showdoc.search(cell.source)): return
        super().__call__(cell)

_procs = [populate_language, add_show_docs, strip_ansi, hide_line, filter_stream_, exec_api, clean_magics, hide_]
_tags = {'echo': 'remove-input', 'output': 'remove-output', 'include': 'remove-cell'}  # nbdev's `#| k: false`

def _markdown(cell):
    md = next((o['data']['text/markdown'] for o in cell.get('outputs', []) if 'text/markdown' in o.get('data', {})), None)
    return ''.join(md) if isinstance(md, list) else md

def _cells(nb_path):
    "nbdev-processed cells of `nb_path`, `show_doc` outputs turned into markdown before the code they document"
    nb = read_nb(nb_path)
    os.environ['IN_TEST'] = '1'  # as in nbdev's own docs build
    try:
        with _cwd(nb_path.parent): NBProcessor(nb=nb, procs=_procs, rm_directives=True).process()
    finally: del os.environ['IN_TEST']
    res, at = [], None
    for c in nb.cells:
        md = _markdown(c) if c.cell_type == 'code' and _re_showdoc.search(c.source) else None
        if md is not None:
            cell = mk_cell(re.sub(r'^\s*---\s*\n', '', md), 'markdown')  # show_doc's rule would end a section
            # nbdev puts a generated show_doc after its exported cell: a reader wants the documentation first
            if getattr(c, 'has_sd', False) and at is not None: res.insert(at, cell); at += 1
            else: res.append(cell)
            continue
        at = None
        c.metadata.pop('execution', None)  # exec_show_docs's timings, not valid nbformat
        if c.cell_type == 'code':
            if not (c.source.strip() or c.get('outputs')): continue  # `#| default_exp` and the like
            d = c.directives_
            tags = [t for k,t in _tags.items() if d.get(k, '').lower() == 'false'] + (['hide-input'] if 'code-fold' in d else [])
            if tags: c.metadata['tags'] = tags
            if {'export', 'exports', 'exporti'} & set(d): at = len(res)
        res.append(c)
    return nb, res

_re_link = re.compile(r'(!?\[[^\]]*\]\()([^)\s]+)(\))')
_re_heading = re.compile(r'^#{1,6}\s+(.*?)\s*#*\s*$')

def _rel_links(src, nb_path, names, stage):
    "Relative links of `src` (written beside `nb_path`) made to work from the staged page: notebooks to pages, files copied"
    def sub(m):
        url = m[2]
        if re.match(r'^[a-z][\w+.-]*:|^#|^/', url): return m[0]
        path, _, anchor = url.partition('#')
        target = (nb_path.parent/path).resolve()
        if target.suffix == '.ipynb' and target in names: new = names[target] + '.ipynb'
        elif target.is_file() and target.is_relative_to(root):
            new = target.relative_to(root).as_posix()
            (stage/new).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(target, stage/new)
        else: return m[0]  # Sphinx warns about it
        return m[1] + new + ('#'+anchor if anchor else '') + m[3]
    return _re_link.sub(sub, src)

def _anchors(cells):
    "Heading slugs of a page's markdown cells"
    res, fence = set(), False
    for c in cells:
        if c.cell_type != 'markdown': continue
        for l in c.source.splitlines():
            if l.startswith('```'): fence = not fence
            elif not fence and (m := _re_heading.match(l)): res.add(github_slugify(m[1]))
    return res

def _linkify(src, lookup, base, anchors):
    "nbdev's backtick links; those to this site go to the page and its `show_doc` heading"
    def sub(m):
        page, a = m[1], m[2] or ''
        if page not in anchors: return m[0]
        # nbdev's anchors keep dots (`class.method`); a method without a show_doc of its own links to its class
        while a and github_slugify(a) not in anchors[page]: a = a.rpartition('.')[0]
        return f"]({page}.ipynb{'#'+github_slugify(a) if a else ''})"
    return re.sub(r'\]\(' + re.escape(base) + r'([\w/-]+)\.html(?:#([^)\s]*))?\)', sub, lookup.linkify(src) or src)

def stage(dest) -> dict:
    "Write the processed notebooks to the new folder `dest` as myst-nb sources; return {page name: notebook}"
    dest = Path(dest)
    dest.mkdir(parents=True)
    cfg, ps = get_config(), pages()
    names = {p.resolve(): n for n,p in ps.items()}
    staged = {n: _cells(p) for n,p in ps.items()}
    anchors = {n: _anchors(cells) for n,(_,cells) in staged.items()}
    lookup, base = NbdevLookup(strip_libs=cfg.lib_path.name), doc_base(cfg)  # nbdev strips the dashed project name
    for n,(nb,cells) in staged.items():
        for c in cells:
            if c.cell_type == 'markdown': c.source = _linkify(_rel_links(c.source, ps[n], names, dest), lookup, base, anchors)
        if n == 'index':
            toc = '\n'.join(o for o in ps if o != 'index')
            cells.append(mk_cell(f'```{{toctree}}\n:hidden:\n:maxdepth: 1\n\n{toc}\n```', 'markdown'))
        nb.cells = cells
        (dest/n).parent.mkdir(parents=True, exist_ok=True)
        write_nb(nb, dest/f'{n}.ipynb')
    return ps

def md_twins(stage_dir, out, names):
    "Write `X.html.md` (and its figures in `X_files/`) beside each page `X.html`, rendered by the README's nbconvert exporter"
    from nbconvert import MarkdownExporter
    from traitlets.config.loader import PyFileConfigLoader
    exp = MarkdownExporter(config=PyFileConfigLoader('readme.py', path=str(docs)).load_config())
    for n in names:
        md,res = exp.from_filename(str(Path(stage_dir)/f'{n}.ipynb'), resources=dict(output_files_dir=f'{n}_files', unique_key=n))
        for f,data in res.get('outputs', {}).items():
            (Path(out)/f).parent.mkdir(parents=True, exist_ok=True)
            (Path(out)/f).write_bytes(data)
        (Path(out)/f'{n}.html.md').write_text(re.sub(r'\]\(([\w/-]+)\.ipynb(#[^)\s]*)?\)', r'](\1.html\2)', md))

_marker = '.docs-work'  # a folder `build` may empty

def build(out=root/'_docs', work=root/'_proc', quiet=True) -> Path:
    "Build the site into `out`; the processed notebooks and Sphinx's own files go to `work`"
    from sphinx.cmd.build import build_main
    out, work = Path(out), Path(work)
    for d,keep in ((out, '.buildinfo'), (work, _marker)):  # only empty what an earlier build wrote
        if d.exists() and any(d.iterdir()) and not (d/keep).exists(): raise FileExistsError(f'{d} is not from a docs build')
    if work.exists(): shutil.rmtree(work)
    names = stage(work/'src')
    (work/_marker).touch()
    # myst-nb writes its figures beside Sphinx's output folder, hence the site is built in `work` and moved
    args = ['-b', 'html', '-c', str(docs), '-d', str(work/'doctrees'), '-W', '--keep-going', '-E'] + (['-q'] if quiet else [])
    if build_main(args + [str(work/'src'), str(work/'html')]): raise RuntimeError(f'sphinx-build failed: {" ".join(args)}')
    md_twins(work/'src', work/'html', names)
    if out.exists(): shutil.rmtree(out)  # no page of a deleted notebook left behind
    shutil.move(work/'html', out)
    return out

@call_parse
def main(out:str=str(root/'_docs'), # folder the site is written to
         work:str=str(root/'_proc'), # folder for the processed notebooks and Sphinx's own files
         verbose:bool=False): # Sphinx's progress output
    "Build the documentation site"
    print(f'site in {build(out, work, quiet=not verbose)/"index.html"}')
