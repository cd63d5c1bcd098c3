"""Spreading independent pieces of NumPy work over the CPU cores.

Attention over ``B * H`` heads and many blocks of query rows is a set of
independent jobs. NumPy releases the GIL inside BLAS calls and inside ufuncs
(``exp``, ``subtract``, reductions), so plain Python threads run these jobs on
all cores at once; only the few microseconds of Python between NumPy calls are
serialised.

One trap: OpenBLAS starts its own threads for every large matrix product. Two
Python threads that each ask OpenBLAS for two threads put four busy threads on
two cores, and OpenBLAS threads spin while they wait: the run gets several
times *slower*. Each worker therefore asks OpenBLAS to use one thread for the
calls it makes (``openblas_set_num_threads_local``, OpenBLAS >= 0.3.27). Where
that cannot be done (another BLAS, an older OpenBLAS) the work runs in the
calling thread, one job after another, and BLAS keeps its own threads.

``ATTN_COURSE_NUM_THREADS`` (an integer >= 1) caps the number of worker threads;
``1`` runs everything in the calling thread.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["THREADS_ENV_VAR", "batch_index_tuples", "num_threads", "parallel_for", "row_block_jobs"]

THREADS_ENV_VAR = "ATTN_COURSE_NUM_THREADS"

_state = threading.local()  # .in_worker: True inside a pool thread (no nested pools)


class _Shared:
    """The process's worker pool and OpenBLAS hooks, made on first use."""

    lock = threading.Lock()
    pool: ThreadPoolExecutor | None = None
    pool_size = 0  # the pool is rebuilt when num_threads() changes
    blas_setters: list | None = None  # ctypes functions, found on first use


def _openblas_local_thread_setters() -> list:
    """``openblas_set_num_threads_local`` of every OpenBLAS loaded in this process (Linux), else []."""
    setters = []
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:
        return setters
    for path in sorted(paths):
        try:
            library = ctypes.CDLL(path)
            setter = library.openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        setter.argtypes = [ctypes.c_int]
        setter.restype = ctypes.c_int
        setters.append(setter)
    return setters


def _blas_can_be_limited() -> bool:
    with _Shared.lock:
        if _Shared.blas_setters is None:
            np.ones((2, 2)) @ np.ones((2, 2))  # make sure NumPy's BLAS is loaded before looking for it
            _Shared.blas_setters = _openblas_local_thread_setters()
    return bool(_Shared.blas_setters)


def _start_worker():
    _state.in_worker = True
    for setter in _Shared.blas_setters or ():
        setter(1)  # this thread's BLAS calls use one core: the pool supplies the others


def num_threads() -> int:
    """How many worker threads ``parallel_for`` uses: the usable cores, capped by ``ATTN_COURSE_NUM_THREADS``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    requested = os.environ.get(THREADS_ENV_VAR, "").strip()
    if requested:
        try:
            cap = int(requested)
        except ValueError:
            raise ValueError(f"{THREADS_ENV_VAR} must be an integer >= 1; got {requested!r}") from None
        if cap < 1:
            raise ValueError(f"{THREADS_ENV_VAR} must be an integer >= 1; got {requested!r}")
        cores = min(cores, cap)
    return max(1, cores)


def _get_pool(size: int) -> ThreadPoolExecutor:
    with _Shared.lock:
        if _Shared.pool is None or _Shared.pool_size != size:
            if _Shared.pool is not None:
                _Shared.pool.shutdown(wait=True)
            _Shared.pool = ThreadPoolExecutor(size, thread_name_prefix="attn_course", initializer=_start_worker)
            _Shared.pool_size = size
        return _Shared.pool


def parallel_for(job, items, parallel: bool = True) -> None:
    """Call ``job(item)`` for every item, spread over the worker threads; returns when all are done.

    The jobs must be independent (each writes its own slice of the output).
    Items are handed out in contiguous chunks (about 16 per thread: a thread
    that the operating system slows down takes fewer of them), so that a
    thread's consecutive jobs touch neighbouring memory. Runs serially when
    ``parallel`` is False (small problems), when there is one thread or one
    item, inside a worker already, or when BLAS threads cannot be limited. An
    exception in a job is re-raised.
    """
    items = list(items)
    threads = num_threads()
    serial = (
        not parallel
        or threads < 2
        or len(items) < 2
        or getattr(_state, "in_worker", False)
        or not _blas_can_be_limited()
    )
    if serial:
        for item in items:
            job(item)
        return
    pool = _get_pool(threads)
    chunk_count = min(len(items), 16 * threads)  # many small chunks: a thread slowed down does not hold up the rest
    chunk_size = math.ceil(len(items) / chunk_count)
    chunks = [items[start : start + chunk_size] for start in range(0, len(items), chunk_size)]

    def run_chunk(chunk):
        for item in chunk:
            job(item)

    for future in [pool.submit(run_chunk, chunk) for chunk in chunks]:
        future.result()


def batch_index_tuples(batch: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every index into the leading (batch) dimensions, in C order: ``[(0, 0), (0, 1), ...]``."""
    return list(np.ndindex(*batch)) if batch else [()]


def row_block_jobs(row_costs, batch: tuple[int, ...]) -> list[tuple[int, list[tuple[int, ...]]]]:
    """Jobs ``(row block, [batch indices])``: each block of query rows with a group of batch elements.

    ``row_costs[r]`` estimates the work of row block ``r`` (e.g. its tiles to
    compute). A job handles several batch elements (heads) of one row block,
    so that what depends only on the rows (the mask of a tile) is computed
    once for all of them; the batch is split into enough groups to give every
    thread many jobs. The jobs come most expensive first: the threads take
    them in that order, so that no thread is left with a long job at the end
    (causal rows near the bottom see many more keys than those at the top).
    """
    row_costs = list(row_costs)
    indices = batch_index_tuples(batch)
    groups = max(1, min(len(indices), math.ceil(16 * num_threads() / max(len(row_costs), 1))))
    size = math.ceil(len(indices) / groups)
    rows = sorted(range(len(row_costs)), key=lambda row: -row_costs[row])  # stable: ties keep their order
    return [(row, indices[start : start + size]) for row in rows for start in range(0, len(indices), size)]
