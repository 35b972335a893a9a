"""Byte-compile a build's python files with checked-hash pycs, skipping valid ones.

Run by the *build's own* interpreter (``<prefix>/bin/python -I _compile_env.py DIR...``, or
``--list FILE`` for the ``.py`` files named in FILE, one a line), so it must stay plain
standard-library Python that any Python 3.8+ can run. ``--strip DIR`` first: the byte-code
names each source by its path below DIR (the wheel cache's staging folder, whose name is
random), so that the same wheel always gives the same byte-code; Python's import names a
module's code by where it found its source anyway.
``compileall`` rewrites every checked-hash pyc it meets (it only recognises
timestamp pycs as current); this script compiles only what is missing or stale.

Only a source that cannot be compiled (a syntax error, bad encoding, py2 test data) is
"not compilable" and reported; anything else that stops a pyc from being written (a full
disk, a quota, a permission) fails the whole run: exit status 1, with an
``error errno=<n> needs=<bytes> <path>: <reason>`` line for each of the first failures and
a last line ``failed <n> of <m> errno=<n> needs=<bytes>``, so the build fails instead of
counting as complete with byte-code missing.
"""

import importlib.util
import os
import py_compile
import sys
from concurrent.futures import ProcessPoolExecutor

MAGIC = importlib.util.MAGIC_NUMBER
CHECKED = 0b11  # flags: hash-based, check_source
#: what a source may fail with and still only be "not compilable"
NOT_COMPILABLE = (SyntaxError, ValueError, UnicodeError)


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


def compile_one(src, strip=None):
    """None when compiled; ("skip", line) for a source that cannot compile; ("error", line) else."""
    dfile = src[len(strip) + 1 :] if strip and src.startswith(strip + "/") else None
    try:
        py_compile.compile(
            src, dfile=dfile, doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH
        )
        return None
    except py_compile.PyCompileError as e:  # it keeps the exception, not its type (exc_type_name)
        if isinstance(e.exc_value, NOT_COMPILABLE):
            return ("skip", src + ": " + (str(e).splitlines()[0] if str(e) else e.exc_type_name))
        return ("error", _error_line(src, getattr(e.exc_value, "errno", None) or 0, e.exc_type_name))
    except (SyntaxError, ValueError, UnicodeError) as e:
        return ("skip", src + ": " + (str(e).splitlines()[0] if str(e) else type(e).__name__))
    except OSError as e:
        return ("error", _error_line(src, e.errno or 0, e.strerror or type(e).__name__))
    except Exception as e:  # noqa: BLE001 - anything else is a failure too, never "not compilable"
        return ("error", _error_line(src, 0, f"{type(e).__name__}: {e}"))


def _error_line(src, errno, reason):
    try:
        needs = os.path.getsize(src)
    except OSError:
        needs = 0
    return f"error errno={errno} needs={needs} {src}: {reason}"


def main(args):
    todo = []
    strip = None
    if args[:1] == ["--strip"]:
        strip, args = args[1].rstrip("/"), args[2:]
    if args[:1] == ["--list"]:
        with open(args[1], encoding="utf-8", errors="surrogateescape") as f:
            todo = [line.rstrip("\n") for line in f if line.strip()]
    else:
        for top in args:
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames[:] = [d for d in dirnames if d != "__pycache__"]
                todo += [os.path.join(dirpath, n) for n in filenames if n.endswith(".py")]
    todo = [s for s in todo if needs_compile(s)]
    if len(todo) > 200:
        with ProcessPoolExecutor() as pool:
            results = [r for r in pool.map(compile_one, todo, [strip] * len(todo), chunksize=64) if r]
    else:
        results = [r for r in (compile_one(src, strip) for src in todo) if r]
    skipped = [line for kind, line in results if kind == "skip"]
    errors = [line for kind, line in results if kind == "error"]
    if errors:
        for line in errors[:20]:
            print(line)
        codes = [line.split()[1] for line in errors]
        needs = sum(int(line.split()[2].split("=", 1)[1]) for line in errors)
        full = "errno=28" if "errno=28" in codes else "errno=122" if "errno=122" in codes else codes[0]
        print(f"failed {len(errors)} of {len(todo)} {full} needs={needs}")
        return 1
    print(f"compiled {len(todo)} file(s), {len(skipped)} not compilable")
    for line in skipped[:20]:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
