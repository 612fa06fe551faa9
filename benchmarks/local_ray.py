"""A local Ray instance for the benchmarks that need one."""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import ray


@contextmanager
def local_ray(num_cpus: int) -> Iterator[None]:
    """Ray started on this machine with `num_cpus` CPUs, its logs and sockets in a directory removed once it
    has stopped (Ray keeps every session's otherwise)."""
    with tempfile.TemporaryDirectory(prefix="ray-", ignore_cleanup_errors=True) as temp_dir:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir)
        try:
            yield
        finally:
            ray.shutdown()
