"""Running independent jobs on a Ray cluster (or a local one): what sweeps and U-LiRA's shadows share."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from tqdm.auto import tqdm

from mubench.errors import UserError

RAY_KEYS = {"address": (str, type(None)), "num_cpus": (int, float), "num_gpus": (int, float), "cluster_cpus": int}


def ray_map(function: Callable, phases: list[list], settings: dict, desc: str) -> Iterable:
    """``function(job)`` for every job, one Ray task each, phase after phase; yields the outcomes as they finish.

    ``settings``: ``address`` (a cluster to join; default: start a local one of
    ``cluster_cpus`` CPUs, default all), ``num_cpus`` and ``num_gpus`` per task. The
    workers get this process's ``MUBENCH_*``, ``HF_*`` and ``TORCH_HOME`` variables.
    """
    try:
        import ray
    except ImportError:
        raise UserError("executor 'ray' needs Ray: pip install 'mubench[ray]'") from None
    forwarded = {name: value for name, value in os.environ.items() if name.startswith(("MUBENCH_", "HF_", "TORCH_HOME"))}
    if not ray.is_initialized():
        local = {} if settings.get("address") else {"num_cpus": settings.get("cluster_cpus", os.cpu_count())}
        ray.init(address=settings.get("address"), runtime_env={"env_vars": forwarded}, log_to_driver=False,
                 include_dashboard=False, **local)
    remote = ray.remote(num_cpus=settings.get("num_cpus", 1), num_gpus=settings.get("num_gpus", 0), max_retries=0)(function)
    with tqdm(total=sum(map(len, phases)), desc=f"{desc} (ray)", unit="job", disable=None) as bar:
        for phase in phases:
            pending = [remote.remote(job) for job in phase]
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                yield ray.get(ready[0])
                bar.update()
