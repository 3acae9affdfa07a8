"""User-facing errors and the command-line entry wrapper.

A ``UserError`` is bad input or a failed precondition that the user can fix:
it is printed as one line (``file:line: key: what is wrong; how to fix``)
and the program exits with status 2, without a traceback.  Everything else
is a bug and keeps its traceback.
"""

import os
import sys


def display_path(path):
    """``path`` relative to the current directory when it is inside it."""
    path = os.fspath(path)
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


class UserError(Exception):
    """An error caused by input the user controls; exit status 2."""

    exit_status = 2

    def __init__(self, message, *, path=None, line=None, key=None, hint=None):
        self.message = message
        self.path = path
        self.line = line
        self.key = key
        self.hint = hint
        super().__init__(self.format())

    def format(self):
        where = ""
        if self.path is not None:
            where = display_path(self.path)
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        key = f"{self.key}: " if self.key else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{key}{self.message}{hint}"


class CommandFailed(UserError):
    """An external command exited non-zero; the message names it and its
    log.  ``argv``, ``status`` and ``output`` (the tail of what it printed)
    are there for callers that react to a particular failure."""

    exit_status = 1

    def __init__(self, message, *, argv=(), status=None, output="", **where):
        self.argv = list(argv)
        self.status = status
        self.output = output
        super().__init__(message, **where)


def cli_main(main):
    """Run ``main(argv)`` and turn ``UserError`` into one line and an exit status."""
    try:
        status = main(sys.argv[1:])
    except UserError as error:
        prog = sys.argv[0].rsplit("/", 1)[-1]
        print(f"{prog}: error: {error.format()}", file=sys.stderr)
        sys.exit(error.exit_status)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(status or 0)
