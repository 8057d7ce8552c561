"""One exception type for bad input, so the CLI can print it and exit non-zero without a traceback."""


class DataPrepError(Exception):
    """Bad input or state the user must fix; the message names the file/record/column and what to do next."""
