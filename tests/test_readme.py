"README.md is generated from index.ipynb by nbconvert, and its code runs."
import subprocess, sys
import nbformat
from pathlib import Path
from traitlets.config.loader import PyFileConfigLoader
from nbconvert import MarkdownExporter

root = Path(__file__).resolve().parents[1]
readme_cmd = 'jupyter nbconvert --config docs/readme.py'

def test_readme_is_fresh(tmp_path):
    "README.md is what the README's own command writes from index.ipynb"
    subprocess.run([sys.executable, '-m', 'jupyter', 'nbconvert', '--config', 'docs/readme.py', '--output-dir', str(tmp_path)],
                   cwd=root, check=True, capture_output=True)
    assert (root/'README.md').read_text() == (tmp_path/'README.md').read_text(), f"README.md is stale: run `{readme_cmd}`"

def test_index_runs():
    "The README's example code runs (cells marked `#| eval: false` need the full data set and are skipped)"
    from nbdev.test import test_nb
    assert test_nb(root/'index.ipynb', basepath=root)[0]

def test_readme_mentions_its_commands():
    txt = (root/'README.md').read_text()
    assert 'pip install -e ".[dev]"' in txt and 'nbdev-test && pytest' in txt

def test_ci_runs_the_readme_commands():
    "CI makes a fresh virtual environment and runs in it the set-up and test commands it reads from the README's Install section"
    ci = (root/'.ci'/'run').read_text()
    assert 'python3 -m venv' in ci and 'deptry .' in ci and 'nbdev-export' in ci
    assert 'bash -euo pipefail -c "$(python .ci/readme_commands.py setup)"' in ci and 'bash -euo pipefail -c "$(python .ci/readme_commands.py test)"' in ci
    cmd = lambda k: subprocess.run([sys.executable, str(root/'.ci'/'readme_commands.py'), k], capture_output=True, text=True, check=True).stdout.strip()
    assert cmd('setup') == 'pip install -e ".[dev]"' and cmd('test') == 'nbdev-test && pytest'

def test_readme_applies_nbdev_directives(tmp_path):
    "`#| hide` and `#| include: false` drop a cell, `echo: false` its code, `output: false` its outputs; other directives are stripped, stderr dropped"
    from nbformat.v4 import new_notebook, new_code_cell, new_markdown_cell, new_output
    out = lambda t, name='stdout': new_output('stream', name=name, text=t)
    code = lambda src, *outs: new_code_cell(src, outputs=list(outs))
    nb = new_notebook(metadata={'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}, cells=[
        new_markdown_cell('# T'), code('#| hide\nsecret()'), code('#| include: false\nhidden()', out('no\n')),
        code('#| echo: false\nquiet()', out('shown\n')), code('#| output: false\nloud()', out('not shown\n')),
        code('#| eval: false\nx = 1', out('1\n'), out('a warning\n', 'stderr'))])
    p = tmp_path/'nb.ipynb'
    nbformat.write(nb, p)
    md,_ = MarkdownExporter(config=PyFileConfigLoader('readme.py', path=str(root/'docs')).load_config()).from_filename(str(p))
    assert md.split() == ['#', 'T', 'shown', '```python', 'loud()', '```', '```python', 'x', '=', '1', '```', '1']

def test_first_example_runs_as_printed():
    "The README's first example is a cell of index.ipynb that `test_index_runs` executes (no `#|` directive skips it), its output saved"
    import re
    block = re.search(r'## A first run\n.*?```python\n(.*?)```', (root/'README.md').read_text(), re.S)[1]
    cells = [c for c in nbformat.read(root/'index.ipynb', as_version=4).cells if c.cell_type == 'code' and c.source.strip() == block.strip()]
    assert len(cells) == 1 and not cells[0].source.lstrip().startswith('#|'), cells
    assert 'glyph_identities' in block and 'precision_at_1' in ''.join(o.get('text', '') for o in cells[0].outputs)  # offline data, scores shown
