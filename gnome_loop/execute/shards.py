"""Running many independent tasks that share one large argument: on a dask cluster
(the shared value is sent to every worker once, not with every task) or here.

Used by the campaign to screen candidate shards. A task whose worker dies is run
again by dask on another worker (up to dask's `allowed-failures`), and one that the
scheduler cancels in the commotion is submitted again here; one that still fails is
reported, not raised, so that the caller can record what did finish. Only
a few tasks per worker thread are in flight at once: the scheduler and the workers
hold a window of the round, never all of it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Callable, Sequence, TypeVar

from gnome_loop import malloc

log = logging.getLogger(__name__)

Task = TypeVar("Task")
Result = TypeVar("Result")

#: Tasks in flight per worker thread (at least MIN_IN_FLIGHT in all), counted anew as
#: each task ends: enough to keep every worker busy while results are recorded, few
#: enough to bound memory.
IN_FLIGHT_PER_THREAD = 2
MIN_IN_FLIGHT = 4
#: Times a task the scheduler cancelled on its own (seen when a worker dies while the
#: task is handed over) is submitted again before it counts as failed.
RESUBMITS = 2


def _run_and_trim(work: Callable[[object, Task], Result], shared: object, task: Task) -> Result:
    """`work(shared, task)`, then the heap's free pages handed back to the OS: a
    long-lived worker otherwise keeps the high-water mark of its largest task."""
    try:
        return work(shared, task)
    finally:
        malloc.trim()


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
    waiting = iter(enumerate(tasks))
    again: list[tuple[int, Task]] = []  # tasks the scheduler cancelled, to submit once more
    resubmitted: dict[int, int] = {}
    futures: dict = {}
    finished = as_completed(loop=client.loop)
    name = getattr(work, "__name__", "shard")

    def top_up() -> None:
        """Submit tasks until the window is full; it follows workers that join or leave."""
        window = max(MIN_IN_FLIGHT, IN_FLIGHT_PER_THREAD * sum(client.nthreads().values()))
        while len(futures) < window:
            item = again.pop() if again else next(waiting, None)
            if item is None:
                return
            future = client.submit(_run_and_trim, work, scattered, item[1], pure=False,
                                   key=f"{name}-{uuid.uuid4().hex}")  # named after `work`, not the wrapper
            futures[future] = item[0]
            finished.add(future)

    try:
        top_up()
        for future in finished:
            index = futures.pop(future)
            if future.status == "cancelled" and resubmitted.get(index, 0) < RESUBMITS:
                resubmitted[index] = resubmitted.get(index, 0) + 1
                again.append((index, tasks[index]))
                log.warning("shard %d was cancelled by the dask scheduler; submitted again", index)
            elif future.status in ("error", "cancelled"):
                failed[index] = repr(future.exception()) if future.status == "error" else \
                    f"cancelled by the dask scheduler {RESUBMITS + 1} times"
                log.warning("shard %d failed: %s", index, failed[index])
            else:
                on_result(index, future.result())
            future.release()
            top_up()
    finally:
        for future in futures:
            future.cancel()
        scattered.release()
    return failed
