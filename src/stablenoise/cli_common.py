"""What every CLI command shares: bad input becomes one line on stderr and a non-zero exit code."""

from __future__ import annotations

import functools
import signal
import sys
import threading

import click

from .errors import PeerFailed, StablenoiseError


def _terminate(signum, frame):
    raise KeyboardInterrupt  # `kill` ends a run like Ctrl-C: temporary files removed, status "interrupted"


def guarded(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)
        try:
            return fn(*args, **kwargs)
        except PeerFailed:
            sys.exit(1)  # rank 0 of the job printed the line
        except StablenoiseError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: finished items are kept in the output folder", err=True)
            sys.exit(130)
    return wrapper


def noise_norm_option(fn):
    """``--noise-norm`` (noise.NOISE_NORMS), shared by every command that turns seeds into noises."""
    return click.option("--noise-norm", type=click.Choice(["keep", "shell"]), default="keep", show_default=True,
                        help="shell: rescale each seed's noise to norm sqrt(d) before it is scored or generated "
                             "(the image is the scored noise's), so the noise's length cannot decide a ranking.")(fn)
