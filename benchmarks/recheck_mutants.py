"""Re-run mutmut's mutants against the current tests, in one process (docs/mutation.md says why).

mutmut 3.8.1 tests a mutant only with the tests its last stats run saw cover the function, from the copy of
tests/ it made when it created mutants/: tests written after that are not used, and a survivor they kill still
reads "survived". This runs the same mutants (mutants/src, switched by MUTANT_UNDER_TEST, as mutmut does) with the
given test files, importing torch and the package once instead of once per mutant. Run from the repository root
after `mutmut run` has generated mutants/:

    cp -r tests/. mutants/tests/
    mutmut results --all true | grep survived | cut -d: -f1 > names.txt
    python benchmarks/recheck_mutants.py names.txt tests/test_batching.py tests/test_selection.py

Prints one line per mutant: its name, "killed" / "survived" / "timeout", and pytest's summary line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
from pathlib import Path


_timed_out = []


def _alarm(signum, frame):
    _timed_out.append(True)
    raise KeyboardInterrupt  # pytest stops the session and returns "interrupted"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", type=Path, help="a file of mutant names, one a line")
    ap.add_argument("tests", nargs="+", help="test files (relative to the repository root)")
    ap.add_argument("--timeout", type=int, default=120, help="seconds before a mutant counts as a timeout")
    args = ap.parse_args()
    names = [line.strip() for line in args.names.read_text().splitlines() if line.strip()]
    os.chdir("mutants")
    sys.path[:0] = [os.getcwd(), str(Path("src").resolve())]
    import pytest

    signal.signal(signal.SIGALRM, _alarm)
    for name in names:
        os.environ["MUTANT_UNDER_TEST"] = name
        out = io.StringIO()
        _timed_out.clear()
        signal.alarm(args.timeout)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-m", "not model", *args.tests])
        except KeyboardInterrupt:
            code = None
        finally:
            signal.alarm(0)
        verdict = "timeout" if _timed_out else "survived" if code == 0 else "killed"
        last = [line for line in out.getvalue().splitlines() if line.strip()][-1:]
        print(name, verdict, *last, flush=True)


if __name__ == "__main__":
    main()
