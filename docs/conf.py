"Sphinx config of the documentation site; `python docs/build.py` stages the notebooks and runs Sphinx with it."
from nbdev.config import get_config

_cfg = get_config()
project = _cfg.lib_path.name
author = _cfg.author
release = _cfg.version
html_baseurl = _cfg.doc_url

extensions = ['myst_nb', 'sphinx-mathjax-offline']  # the latter copies MathJax 3 into the site: maths without a network
nb_execution_mode = 'off'            # the notebooks' saved outputs are the documentation
nb_output_stderr = 'remove'          # warnings on stderr are noise on a page
nb_merge_streams = True
myst_enable_extensions = ['dollarmath', 'amsmath']
myst_heading_anchors = 4             # `page.ipynb#slug` links to headings, show_doc's `###`/`####` included
myst_dmath_double_inline = True
exclude_patterns = ['**.ipynb_checkpoints']
suppress_warnings = ['myst.header']  # show_doc's `###` headings follow a page's `#` title, as on nbdev's sites

html_theme = 'furo'
html_title = project
html_show_sourcelink = False
html_copy_source = False
html_use_index = False              # the API is in the pages, under the `show_doc` headings
