"README.md is generated from index.ipynb and its code runs."
import json, os, sys
from pathlib import Path
import pytest

root = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(root/'tools'))
import readme

def test_readme_is_fresh():
    assert (root/'README.md').read_text() == readme.render(), "README.md is stale: run `python tools/readme.py`"

def test_index_runs():
    "The README's example code runs (cells marked `#| eval: false` need the full data set and are skipped)"
    from nbdev.test import test_nb
    assert test_nb(root/'index.ipynb', basepath=root)[0]

def test_readme_mentions_its_commands():
    txt = (root/'README.md').read_text()
    assert 'pip install -e ".[dev]"' in txt and 'nbdev-test && pytest' in txt

def test_ci_runs_the_readme_commands():
    ci = (root/'.ci'/'run').read_text()
    assert 'pip install -q -e ".[dev]"' in ci and 'nbdev-test && pytest' in ci and 'nbdev-export' in ci

def test_render_drops_hidden_cells_and_directives(tmp_path):
    cells = [dict(cell_type='markdown', source=['# T'], metadata={}),
             dict(cell_type='code', source=['#| hide\nsecret()'], metadata={}, outputs=[]),
             dict(cell_type='code', source=['#| eval: false\nx = 1'], metadata={}, outputs=[dict(output_type='stream', name='stdout', text=['1\n']),
                                                                                             dict(output_type='stream', name='stderr', text=['a warning\n'])])]
    p = tmp_path/'nb.ipynb'
    p.write_text(json.dumps(dict(cells=cells, metadata={}, nbformat=4, nbformat_minor=5)))
    assert readme.render(p) == '# T\n\n```python\nx = 1\n```\n\n```\n1\n```\n'
