"""Byte-compile a build's python files with checked-hash pycs, skipping valid ones.

Run by the *build's own* interpreter (``<prefix>/bin/python -I _compile_env.py DIR...``),
so it must stay plain standard-library Python that any Python 3.8+ can run.
``compileall`` rewrites every checked-hash pyc it meets (it only recognises
timestamp pycs as current); this script compiles only what is missing or stale.
"""

import importlib.util
import os
import py_compile
import sys
from concurrent.futures import ProcessPoolExecutor

MAGIC = importlib.util.MAGIC_NUMBER
CHECKED = 0b11  # flags: hash-based, check_source


def needs_compile(src):
    try:
        pyc = importlib.util.cache_from_source(src)
        with open(pyc, "rb") as f:
            head = f.read(16)
        if len(head) < 16 or head[:4] != MAGIC or int.from_bytes(head[4:8], "little") != CHECKED:
            return True
        with open(src, "rb") as f:
            return head[8:16] != importlib.util.source_hash(f.read())
    except (OSError, ValueError):
        return True


def compile_one(src):
    try:
        py_compile.compile(src, doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        return None
    except (py_compile.PyCompileError, SyntaxError, UnicodeDecodeError, OSError) as e:
        return src + ": " + (str(e).splitlines()[0] if str(e) else type(e).__name__)


def main(dirs):
    todo = []
    for top in dirs:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            todo += [os.path.join(dirpath, n) for n in filenames if n.endswith(".py")]
    todo = [s for s in todo if needs_compile(s)]
    failed = []
    if len(todo) > 200:
        with ProcessPoolExecutor() as pool:
            failed = [r for r in pool.map(compile_one, todo, chunksize=64) if r]
    else:
        failed = [r for r in map(compile_one, todo) if r]
    print(f"compiled {len(todo)} file(s), {len(failed)} not compilable")
    for line in failed[:20]:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
