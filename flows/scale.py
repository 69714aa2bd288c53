"""Scale-out: score partitions as Prefect tasks on a task runner (local threads or Dask).

`partition_mapper` returns the ``map_partitions`` function `anomaly_ae.steps.score` accepts.
Each partition task loads the model itself and writes its part files where `steps.score`
asked, so the merged results are the same as a single-process run with the same partitions.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.logs import forward_library_logs
from flows.retry import transient_only

TASK_RUNNERS = ("local", "dask")


@task(name="score-partition", task_run_name="score-partition-{index}", retries=1, retry_delay_seconds=2,
      retry_condition_fn=transient_only, cache_policy=NO_CACHE)
def score_partition(model: str, part, part_dir: str, threshold: float, normal: list[str] | None,
                    index: int = 0) -> dict:
    """Score one partition with a model loaded here (in whichever process runs the task)."""
    from anomaly_ae import steps

    forward_library_logs()
    return steps.score_partition(model, part, part_dir, threshold=threshold, normal=normal)


def make_task_runner(kind: str = "local", address: str | None = None, workers: int = 2, threads: int = 4):
    """A Prefect task runner: ``local`` (a thread pool) or ``dask`` (`address`, or a local cluster).

    Raises:
        ConfigError: an unknown kind, or dask without prefect-dask installed.
    """
    from anomaly_ae.errors import ConfigError

    if kind == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=threads)
    if kind != "dask":
        raise ConfigError(f"--task-runner must be one of {', '.join(TASK_RUNNERS)}, got {kind!r}.")
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError("--task-runner dask needs prefect-dask: pip install 'anomaly-ae[dask]'.") from None
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})


def partition_mapper(model: str | Path, kind: str = "local", address: str | None = None, workers: int = 2):
    """The ``map_partitions`` callable for `anomaly_ae.steps.score`: one task per partition.

    Call it inside a flow run: the tasks report to that run. Dask workers are pointed at the
    same Prefect API as this process (also a temporary local server's), so their task runs
    show up under this flow run instead of starting servers of their own.
    """
    model = str(Path(model).resolve())

    def map_partitions(parts, part_dirs, threshold, normal):
        runner = make_task_runner(kind, address, workers, threads=max(1, min(len(parts), 4)))
        names = sorted(normal) if normal is not None else None
        with _same_api_for_workers(kind), runner:
            futures = [runner.submit(score_partition, {"model": model, "part": p, "part_dir": str(d),
                                                       "threshold": float(threshold), "normal": names, "index": k})
                       for k, (p, d) in enumerate(zip(parts, part_dirs))]
            return [f.result() for f in futures]

    return map_partitions


def mapper_for(p, task_runner: str | None = None, dask_address: str | None = None, partitions: int | None = None):
    """The ``map_partitions`` for a pipeline's scoring, or None to score in this process.

    `task_runner` and `dask_address` default to the pipeline's [scale] table; scoring fans out
    whenever the runner is not local or there is more than one partition.
    """
    runner = task_runner or p.scale.task_runner
    if runner == "local" and (partitions or p.scale.partitions) == 1:
        return None
    return partition_mapper(p.model_dir, runner, dask_address or p.scale.dask_address, p.scale.dask_workers)


def _same_api_for_workers(kind: str):
    """Set PREFECT_API_URL to the API this process talks to while Dask workers run tasks."""
    import contextlib

    from prefect.settings import PREFECT_API_URL, temporary_settings

    if kind != "dask" or PREFECT_API_URL.value():
        return contextlib.nullcontext()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url).rstrip("/")
    return temporary_settings(updates={PREFECT_API_URL: url})
