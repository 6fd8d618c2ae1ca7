"""Loading from a hub id or a local folder, with every failure as one StablenoiseError line."""

from __future__ import annotations

import warnings

from .errors import StablenoiseError


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines or [type(e).__name__])[0][:200]


def from_pretrained(cls, source: str, what: str, **kwargs):
    """``cls.from_pretrained(source)`` (diffusers or transformers) with hub, offline and broken-folder
    errors as "could not load WHAT: reason"."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    # One bar per weight file (transformers) or component (diffusers) is noise in a command's output, and
    # would bury the one line a refused command prints.
    hf_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls.from_pretrained(source, **kwargs)
    except StablenoiseError:
        raise
    except Exception as e:
        raise StablenoiseError(f"could not load {what}: {first_line(e)}") from e
