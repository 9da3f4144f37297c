"""The errors a user can fix (bad data, checkpoint, config): the entry points print their message alone.

Every expected error derives from ``MavosError`` and names the file or key and what is wrong; train.py,
evaluate.py, the converter and the exporter end with that message and exit code 1 instead of a traceback (set
``HYDRA_FULL_ERROR=1`` for the full trace). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class MavosError(Exception):
    """Base of the errors whose message is all a user needs."""


def print_error(program: str, message) -> None:
    """The one form every entry point gives a user's mistake in: ``<program>: error: <message>`` on stderr."""
    print(f"{program}: error: {message}", file=sys.stderr, flush=True)


def report_expected_errors(fn: Callable[[], T], program: str) -> T:
    """Run ``fn``; a ``MavosError`` prints ``<program>: error: <message>`` and exits 1 (full trace with
    ``HYDRA_FULL_ERROR=1``)."""
    try:
        return fn()
    except Exception as e:
        expected = _expected(e)
        if expected is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print_error(program, expected)
        raise SystemExit(1) from None


def _expected(error: BaseException) -> BaseException | None:
    """The user's mistake behind ``error``: a MavosError, or Lightning's ``MisconfigurationException`` (a trainer
    setting it refuses, naming it), as raised or as the cause Hydra wrapped while building an object from the
    config (``Error in call to target ...``: a missing weight file found by a constructor). Other wrappers are
    left alone: their traceback is the bug report."""
    while not (isinstance(error, MavosError) or type(error).__name__ == "MisconfigurationException"):
        if not type(error).__module__.startswith("hydra") or error.__cause__ is None:
            return None
        error = error.__cause__
    return error
