"""Versions of Python and of the packages a run depends on, for provenance."""

from __future__ import annotations

import platform
from importlib import metadata

__all__ = ["DEFAULT_PACKAGES", "package_versions"]

DEFAULT_PACKAGES = (
    "scopeloop",
    "pymmcore-plus",
    "pymmcore",
    "useq-schema",
    "ome-writers",
    "numpy",
    "scipy",
    "pyzmq",
    "pydantic",
)


def package_versions(packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict[str, str]:
    """Python's version and each installed package's ("not installed" if absent)."""
    out = {"python": platform.python_version()}
    for dist in packages:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
