"""Quoting for the two languages a rendered job script speaks: bash, and sbatch's own `#SBATCH` line parser.

Every value that comes from a config file or the command line goes through one of these, so a job name such as
`x; rm -rf ~` or `$(id)` stays a literal string. sbatch reads `#SBATCH` lines itself (no shell): it groups words with
double quotes and takes the character after a backslash literally, but knows nothing of single quotes, so bash's
quoting would leave stray quotes in the value there.
"""
from __future__ import annotations

import re
import shlex

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLAIN = re.compile(r"[A-Za-z0-9_.:/@%+,=-]+")  # needs no quotes in a #SBATCH line


class LaunchError(ValueError):
    """A launcher setting that cannot work; the message names the option and says what to do."""


def check_printable(value: str, what: str) -> str:
    """Refuse control characters: a newline in a `#SBATCH` value would start a new script line."""
    if _CONTROL.search(value):
        raise LaunchError(f"{what}={value!r} contains a control character (newline, tab...); remove it")
    return value


def sh(value: object) -> str:
    """One bash word, whatever the value contains."""
    return shlex.quote(str(value))


def sbatch_value(value: object, what: str) -> str:
    """One `#SBATCH` option value: as is when plain, else double-quoted with `\\`, `"` and `#` escaped."""
    text = check_printable(str(value), what)
    if _PLAIN.fullmatch(text):
        return text
    return '"' + re.sub(r'([\\"#])', r"\\\1", text) + '"'


def directive(option: str, value: object = None) -> str:
    """`#SBATCH --option="value"`, or `#SBATCH --option` for a flag."""
    if not re.fullmatch(r"--[a-z][a-z0-9-]*", option):
        raise LaunchError(f"sbatch option {option!r} must look like --name (lower-case letters, digits, dashes)")
    if value is None:
        return f"#SBATCH {option}"
    return f"#SBATCH {option}={sbatch_value(value, option)}"
