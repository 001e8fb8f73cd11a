"""Inference runtimes, one module per backend, loaded through a registry that skips missing packages."""

from daemon.runtimes.base import (  # noqa: F401
    ArtifactError,
    Runtime,
    RuntimeOptions,
    RuntimeUnavailable,
    available,
    get,
    names,
)
