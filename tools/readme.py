"Render README.md from index.ipynb: markdown cells as they are, code cells as ```python blocks with their text outputs."
import re, sys, json
from pathlib import Path

root = Path(__file__).resolve().parents[1]
_directive = re.compile(r'^\s*#\|.*$\n?', re.MULTILINE)

def _hidden(src): return bool(re.search(r'^\s*#\|\s*hide\b', src, re.MULTILINE))

def _outputs(cell):
    "Text of a code cell's outputs (plots and rich outputs are left to the docs)"
    txt = []
    for o in cell.get('outputs', []):
        if o['output_type'] == 'stream':
            if o.get('name') != 'stderr': txt.append(''.join(o['text']))  # warnings are noise in a README
        elif 'text/markdown' in o.get('data', {}): txt.append(('md', ''.join(o['data']['text/markdown'])))
        elif 'text/plain' in o.get('data', {}): txt.append(''.join(o['data']['text/plain']))
    return txt

def render(nb_path=root/'index.ipynb') -> str:
    "README text for `nb_path`"
    parts = []
    for cell in json.loads(Path(nb_path).read_text())['cells']:
        src = ''.join(cell['source'])
        if _hidden(src): continue
        src = _directive.sub('', src).strip()
        if cell['cell_type'] == 'markdown': parts.append(src)
        elif cell['cell_type'] == 'code':
            if src: parts.append(f'```python\n{src}\n```')
            for o in _outputs(cell):
                parts.append(o[1].strip() if isinstance(o, tuple) else f'```\n{o.rstrip()}\n```')
    return '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    out = root/'README.md'
    out.write_text(render())
    print(f'wrote {out}')
