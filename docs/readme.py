"""nbconvert config: `jupyter nbconvert --config docs/readme.py` renders README.md from index.ipynb.
The docs build (docs/build.py) renders each page's `.html.md` twin with the same exporter."""
import re
from nbconvert.preprocessors import Preprocessor

_re_directive = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')

def directives(cell):
    "nbdev's `#|` directives at the top of `cell`, as {name: value}"
    res = {}
    for line in cell.source.splitlines():
        m = _re_directive.match(line)
        if not m: break
        res[m[1]] = m[2]
    return res

def _off(v): return v.lower() == 'false'

class NbdevDirectives(Preprocessor):
    "Apply nbdev's directives as nbdev's docs do: `hide`/`include: false` drop a cell, `echo: false` its code, `output: false` its outputs"
    def preprocess(self, nb, resources):
        # nbdev-clean keeps the kernelspec but drops language_info, which names the code fences
        nb.metadata.setdefault('language_info', {'name': nb.metadata.get('kernelspec', {}).get('language', 'python')})
        keep = []
        for cell in nb.cells:
            d = directives(cell)
            if 'hide' in d or _off(d.get('include', '')): continue
            cell.source = '\n'.join(l for l in cell.source.splitlines() if not _re_directive.match(l)).strip()
            if cell.cell_type == 'code':
                echo = not _off(d.get('echo', ''))
                if not echo: cell.metadata['transient'] = {'remove_source': True}  # as nbconvert's TagRemovePreprocessor does
                # warnings on stderr are noise in a README
                outs = [] if _off(d.get('output', '')) else cell.get('outputs', [])
                cell.outputs = [o for o in outs if o.get('name') != 'stderr']
                if not (cell.outputs or echo and cell.source): continue
            keep.append(cell)
        nb.cells = keep
        return nb, resources

c = get_config()  # noqa: F821 (injected by traitlets)
c.NbConvertApp.notebooks = ['index.ipynb']
c.NbConvertApp.export_format = 'markdown'
c.NbConvertApp.output_base = 'README'
c.MarkdownExporter.preprocessors = [NbdevDirectives]
