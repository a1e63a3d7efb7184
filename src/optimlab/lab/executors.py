"""Where the lab's runs execute besides the local process pool: a Ray cluster.

:func:`~optimlab.lab.runner.run_all` hands its runs to an executor's ``run(fn, items, args,
on_result, workers)``: call ``fn(item, *args)`` for every item somewhere, and ``on_result`` with
each result in this process as soon as it arrives. The runner keeps everything else -- which runs
are already recorded, the JSON Lines appends, the progress bar, Ctrl-C -- so a comparison on Ray
writes the same records and report as one on the local pool, and resumes the same way.

Ray is an optional extra (``pip install 'optimlab[ray]'``), imported only when a Ray executor
runs. Without an address it uses the Ray instance this process is already connected to, else
whatever ``ray.init()`` finds (``$RAY_ADDRESS``, or a new local instance on this machine).

Example::

    >>> run_all(grid("digits-mlp", ["sgd", "adam"], seeds=2), "runs/r.jsonl", executor="ray")
    >>> run_all(specs, "runs/r.jsonl", executor=RayExecutor(address="ray://head:10001"))
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["RayExecutor", "get_executor", "EXECUTORS"]

EXECUTORS = ("local", "ray")  # what run_all(executor=...) and --executor accept by name


def _call(fn: Callable, item: Any, args: tuple, threads: int) -> Any:
    """What a Ray task runs: ``fn(item, *args)`` with torch limited to the task's CPUs (a
    worker process is reused by tasks of any size, and the local pool runs each in one thread)."""
    import torch

    torch.set_num_threads(threads)
    return fn(item, *args)


class RayExecutor:
    """Each call a Ray task with ``cpus_per_run`` CPUs (torch uses that many threads), results
    streamed back in the order they finish.

    ``address``: the cluster to connect to (``ray.init(address=...)``: ``"auto"``,
    ``"HOST:6379"``, or ``"ray://HOST:10001"`` with ``pip install 'ray[client]'``); ``None``
    uses the connection this process already has, else ``ray.init()``'s default. Ray stays
    initialised afterwards, so later calls do not pay its start-up again. Every node must have
    optimlab (and the modules of any ``module:function`` task) installed; paths given to the runs
    (``checkpoint_dir``) must be writable on every node -- a shared filesystem lets an
    interrupted run continue on any node."""

    def __init__(self, address: str | None = None, *, cpus_per_run: float = 1):
        if importlib.util.find_spec("ray") is None:  # before any run, without importing it
            raise ImportError("the Ray executor needs Ray, which is not installed: pip install 'optimlab[ray]'")
        if not cpus_per_run > 0:
            raise ValueError(f"cpus_per_run={cpus_per_run!r}: give a number of CPUs above 0, e.g. 1")
        self.address = address
        self.cpus_per_run = cpus_per_run

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, cpus_per_run={self.cpus_per_run!r})"

    def _connect(self):
        import ray

        if ray.is_initialized():
            if self.address is not None:
                warnings.warn(f"Ray is already initialised in this process: the runs go to that cluster, not to "
                              f"address={self.address!r} (call ray.shutdown() first to connect elsewhere)",
                              stacklevel=4)
        else:
            import logging

            try:
                ray.init(address=self.address, logging_level=logging.WARNING)
            except (ConnectionError, ValueError) as e:
                where = f"the Ray cluster at {self.address!r}" if self.address else "Ray"
                raise ConnectionError(f"cannot start or reach {where}: {e}") from e
        return ray

    def run(self, fn: Callable, items: Sequence[Any], args: tuple, on_result: Callable[[Any], None],
            workers: int | None = None) -> None:
        """``on_result(fn(item, *args))`` for every item, as each Ray task finishes; at most
        ``workers`` tasks at once (``None``: as many as the cluster's CPUs take). An exception,
        Ctrl-C included, cancels the tasks still running before it propagates."""
        if workers is not None and workers < 1:
            raise ValueError(f"workers={workers!r}: give at least 1, or None for as many as the cluster takes")
        if not items:  # all recorded already: no need to start or reach a cluster
            return
        ray = self._connect()
        task = ray.remote(_call).options(num_cpus=self.cpus_per_run)
        threads = max(1, int(self.cpus_per_run))
        queue = list(reversed(items))
        pending: list = []
        try:
            while queue or pending:
                while queue and (workers is None or len(pending) < workers):
                    pending.append(task.remote(fn, queue.pop(), args, threads))
                ready, pending = ray.wait(pending, num_returns=1)
                on_result(ray.get(ready[0]))
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)


def get_executor(executor: str | RayExecutor | None) -> RayExecutor | None:
    """``None`` or ``"local"``: the runner's own process pool (returned as ``None``);
    ``"ray"``: a :class:`RayExecutor` with its defaults; an object with a ``run`` method: itself."""
    if executor is None or executor == "local":
        return None
    if executor == "ray":
        return RayExecutor()
    if isinstance(executor, str) or not callable(getattr(executor, "run", None)):
        raise ValueError(f"executor={executor!r}: give one of {', '.join(map(repr, EXECUTORS))} or an executor object "
                         "such as optimlab.lab.executors.RayExecutor(address=...)")
    return executor
