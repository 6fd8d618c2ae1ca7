"""What every CLI command shares: bad input becomes one line on stderr and a non-zero exit code."""

from __future__ import annotations

import functools
import signal
import sys
import threading

import click

from .errors import StablenoiseError


def _terminate(signum, frame):
    raise KeyboardInterrupt  # `kill` ends a run like Ctrl-C: temporary files removed, status "interrupted"


def guarded(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)
        try:
            return fn(*args, **kwargs)
        except StablenoiseError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: finished items are kept in the output folder", err=True)
            sys.exit(130)
    return wrapper
