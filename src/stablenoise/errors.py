class StablenoiseError(ValueError):
    """Bad input or an unusable model: the CLI prints the message on one line and exits non-zero."""


class PeerFailed(StablenoiseError):
    """Another process of the same job (rank 0) refused the job and printed why: this one exits non-zero
    without repeating the line."""
