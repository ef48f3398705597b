"Small colour image folders of word-named classes, and the package's console scripts, for the tests of galleries and deployment."
import shutil
import numpy as np, pytest

WORDS = ('apple', 'banana', 'cherry', 'damson', 'elder', 'fig', 'grape', 'hazel')

def colour_folder(path, classes, n, seed):
    "RGB PNGs of mixed sizes in class-name folders, class i a bright patch in its own place and channel"
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in classes:
        i = WORDS.index(c)
        (path/c).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            a = rng.integers(0, 60, (int(rng.integers(28, 40)), int(rng.integers(28, 40)), 3), dtype=np.uint8)
            a[3*(i//4):3*(i//4)+12, 6*(i % 4):6*(i % 4)+10, i % 3] = 250
            Image.fromarray(a).save(path/c/f'{c}{j}.png')
    return path

def console_script(name):
    "The path of an installed console script, or the test fails saying how to install it"
    exe = shutil.which(name)
    if exe is None: pytest.fail(f"console script {name} is not installed: pip install -e .")
    return exe
