"""One way for a test to run threads at once (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_threads(
    worker: Callable[[int], object],
    n: int,
    *,
    background: Callable[[threading.Event], object] | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> None:
    """Run ``worker(0)`` to ``worker(n - 1)`` in ``n`` threads at once; wait for them all.

    ``background(stop)`` runs in one more thread, started first, until the
    workers are done and ``stop`` is set; ``meanwhile()`` runs in this thread
    once the workers are started.  The first exception any of them raised
    (an assertion, say) is raised here, after every thread has ended.
    """
    errors: list[BaseException] = []
    stop = threading.Event()

    def guarded(fn: Callable[..., object], arg: object) -> None:
        try:
            fn(arg)
        except BaseException as exc:  # raised below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=guarded, args=(worker, i)) for i in range(n)]
    helper = None if background is None else threading.Thread(target=guarded, args=(background, stop))
    if helper is not None:
        helper.start()
    for t in workers:
        t.start()
    try:
        if meanwhile is not None:
            meanwhile()
    finally:
        for t in workers:
            t.join()
        stop.set()
        if helper is not None:
            helper.join()
    if errors:
        raise errors[0]
