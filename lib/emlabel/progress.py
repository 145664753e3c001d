"""Progress of long steps (epochs, images) for whoever shows it: the CLI draws bars.

Library code calls :func:`advance` after each step; inside :func:`showing_bars` (the
headless CLI) each kind of step gets a tqdm bar. Elsewhere (the server, whose trainers
report through their stats files) :func:`advance` does nothing. tqdm comes with cleanlab
(pinned in requirements.txt).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TextIO

Sink = Callable[[str, int, int], None]
_sink: ContextVar[Sink | None] = ContextVar("emlabel_progress", default=None)


def advance(what: str, done: int, total: int) -> None:
    """``done`` of ``total`` steps of ``what`` (e.g. "segmentation epochs") are finished."""
    sink = _sink.get()
    if sink is not None:
        sink(what, done, total)


@contextlib.contextmanager
def showing_bars(stream: TextIO | None = None) -> Iterator[None]:
    """Draw a tqdm bar per kind of step while the block runs (a new pass restarts it), on
    ``stream`` (default: the standard error of the moment)."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    bars: dict[str, Any] = {}

    def sink(what: str, done: int, total: int) -> None:
        bar = bars.get(what)
        if bar is None or bar.total != total or done < bar.n:
            if bar is not None:
                bar.close()
            bar = bars[what] = tqdm(total=total, desc=what, file=stream, dynamic_ncols=True)
        bar.update(done - bar.n)

    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)
        for bar in bars.values():
            bar.close()
