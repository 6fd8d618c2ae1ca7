"""What every CLI command shares: bad input becomes one line on stderr and a non-zero exit code."""

from __future__ import annotations

import functools
import sys

import click

from .errors import StablenoiseError


def guarded(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StablenoiseError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: finished items are kept in the output folder", err=True)
            sys.exit(130)
    return wrapper
