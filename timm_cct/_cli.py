"""Command-line conventions shared by the package's commands: a user error is one line on stderr, exit status 2."""
import argparse
import sys
from typing import NoReturn

__all__ = ['CliParser', 'fail', 'USAGE_ERROR']

USAGE_ERROR = 2


def fail(prog: str, message: str) -> int:
    """Print ``prog: error: message`` as one line on stderr; returns the exit status for a user error."""
    print(f'{prog}: error: {" ".join(str(message).split())}', file=sys.stderr)
    return USAGE_ERROR


class CliParser(argparse.ArgumentParser):
    """``argparse`` parser whose errors are one line on stderr (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, f'{message} (see {self.prog} --help)')
        sys.exit(USAGE_ERROR)
