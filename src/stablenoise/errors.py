class StablenoiseError(ValueError):
    """Bad input or an unusable model: the CLI prints the message on one line and exits non-zero."""
