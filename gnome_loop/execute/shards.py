"""Running many independent tasks that share one large argument: on a dask cluster
(the shared value is sent to every worker once, not with every task) or here.

Used by the campaign to screen candidate shards. A task whose worker dies is run
again by dask on another worker (up to dask's `allowed-failures`); one that still
fails is reported, not raised, so that the caller can record what did finish.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence, TypeVar

log = logging.getLogger(__name__)

Task = TypeVar("Task")
Result = TypeVar("Result")


def run_shards(work: Callable[[object, Task], Result], shared: object, tasks: Sequence[Task],
               on_result: Callable[[int, Result], None], client=None) -> dict[int, str]:
    """Call `on_result(index, work(shared, tasks[index]))` for every task, in the calling
    thread, as tasks finish; returns the error of each task that failed, by index."""
    failed: dict[int, str] = {}
    if client is None:
        for index, task in enumerate(tasks):
            on_result(index, work(shared, task))
        return failed
    from distributed import as_completed

    [scattered] = client.scatter([shared], broadcast=True, hash=False)
    futures = {client.submit(work, scattered, task, pure=False): index for index, task in enumerate(tasks)}
    for future in as_completed(futures):
        index = futures.pop(future)
        if future.status == "error":
            failed[index] = repr(future.exception())
            log.warning("shard %d failed: %s", index, failed[index])
        else:
            on_result(index, future.result())
        future.release()
    scattered.release()
    return failed
