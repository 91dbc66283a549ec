"""Logging: every module logs to its own `logging.getLogger(__name__)` under the "foveal" logger; the command line
sets it up once (`--quiet`: warnings only). Progress bars follow the same switch and stay off outside a terminal."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

LOGGER = logging.getLogger("foveal")
BARS = {"on": True}  # off in a compare worker process: several models at once log lines, not bars that overwrite


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a test's capture, a redirected stream), not the one at set-up."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup(quiet: bool = False, bars: bool = True) -> None:
    """Messages to stderr, one line each (stdout is left to each command's result)."""
    BARS["on"] = bars
    LOGGER.handlers.clear()
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.WARNING if quiet else logging.INFO)
    LOGGER.propagate = False


def progress(iterable=None, show: bool = True, **kwargs) -> tqdm:
    """A tqdm bar, shown only when asked (show: e.g. rank 0 only), info messages are on and stderr is a terminal."""
    show = show and BARS["on"] and LOGGER.isEnabledFor(logging.INFO)
    return tqdm(iterable, disable=None if show else True, leave=False, dynamic_ncols=True, **kwargs)
