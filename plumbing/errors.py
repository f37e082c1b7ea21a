"""How Deblur talks to its user about trouble: the one-line error, the stop, notes and warnings.

Every other module reports through these; none of them decides an exit code on its own.
"""

import sys


class DeblurError(Exception):
    """A failure reported as one line: exit code 2 for bad input or settings, 1 at run time."""

    def __init__(self, message, exit_code=2):
        super().__init__(message)
        self.exit_code = exit_code


class Stopped(Exception):
    """A stop request that ends the job before it is done; exit code 128 + the signal."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


def refuse(name, value, requirement):
    raise DeblurError(f"--{name} {requirement}, got {value!r}")


def note(message):
    print(f"Note: {message}")


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


def first_line(error):
    return str(error).strip().splitlines()[0][:200]
