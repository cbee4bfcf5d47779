"""Runs one atheris (libFuzzer) campaign:

    python tests/fuzz/fuzz.py TARGET [CORPUS_DIR ...] [libFuzzer flags]

e.g. ``python tests/fuzz/fuzz.py gguf /tmp/corpus/gguf tests/fuzz/seeds/gguf
-max_total_time=600 -timeout=20 -rss_limit_mb=4096 -artifact_prefix=/tmp/crash-``.
Targets are in harnesses.py; without a corpus dir the target's seeds are used.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harnesses  # noqa: E402
import linly_engine.formats.gguf  # noqa: E402,F401
import linly_engine.formats.hf  # noqa: E402,F401
import linly_engine.formats.meta  # noqa: E402,F401
import linly_engine.formats.packed  # noqa: E402,F401
import linly_engine.model  # noqa: E402,F401
import linly_engine.templates  # noqa: E402,F401
import linly_engine.tokenizer  # noqa: E402,F401

# Python packages whose code is traced for coverage, besides ours: the parsers that sit
# between the input and our code (gguf-py reads the GGUF container, jinja2 the templates).
THIRD_PARTY = {"packed": ("gguf",), "gguf": ("gguf",), "templates": ("jinja2",), "templates_source": ("jinja2",)}


def instrument(packages: tuple[str, ...]) -> int:
    """Adds coverage tracing to every function of the loaded modules of ``packages``.
    (atheris.instrument_imports does not see through the editable install's import
    redirect: it reported 8 edges for the whole loader code.) Returns the count."""
    import types

    seen: set[int] = set()

    def one(f) -> None:
        if isinstance(f, (classmethod, staticmethod)):
            f = f.__func__
        if isinstance(f, property):
            for g in (f.fget, f.fset):
                one(g)
            return
        if isinstance(f, types.FunctionType) and id(f) not in seen:
            seen.add(id(f))
            atheris.instrument_func(f)

    for name, mod in list(sys.modules.items()):
        if mod is None or name.split(".")[0] not in packages or not str(getattr(mod, "__file__", "")).endswith(".py"):
            continue
        for obj in list(vars(mod).values()):
            if getattr(obj, "__module__", None) != name:
                continue
            if isinstance(obj, type):
                for v in list(vars(obj).values()):
                    one(v)
            else:
                one(obj)
    return len(seen)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in harnesses.TARGETS:
        sys.exit(f"usage: fuzz.py TARGET [corpus dirs] [libFuzzer flags]; targets: {', '.join(harnesses.TARGETS)}")
    name = sys.argv[1]
    args = [sys.argv[0]] + sys.argv[2:]
    if not any(not a.startswith("-") for a in args[1:]):
        # libFuzzer adds new inputs to the first directory: a scratch one, not the seeds
        import tempfile

        args += [tempfile.mkdtemp(prefix=f"linly-corpus-{name}-"), str(HERE / "seeds" / harnesses.SEED_DIRS.get(name, name))]
    if name == "tokenizer_text":
        harnesses.fixed_tokenizers()  # built once, outside the timed inputs
    for extra in THIRD_PARTY.get(name, ()):
        __import__(extra)
    if name.startswith("templates"):
        import jinja2.sandbox  # noqa: F401
    n = instrument(("linly_engine", "harnesses") + THIRD_PARTY.get(name, ()))
    print(f"INFO: traced {n} functions", file=sys.stderr)
    atheris.Setup(args, harnesses.TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
