"""Print the shell commands of one fenced bash block of the README's Install section: `setup` (the first) or `test` (the second).
CI runs exactly what a new user reads, so a step the README leaves out fails here first."""
import re, sys
from pathlib import Path
section = Path(__file__).parent.parent.joinpath('README.md').read_text().split('\n## Install\n', 1)[1].split('\n## ', 1)[0]
blocks = re.findall(r'```bash\n(.*?)```', section, re.S)
if len(blocks) != 2: sys.exit(f"README's Install section should hold two bash blocks (set-up, tests), it holds {len(blocks)}")
print(blocks[{'setup': 0, 'test': 1}[sys.argv[1]]].strip())
