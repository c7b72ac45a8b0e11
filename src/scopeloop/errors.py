"""The exceptions scopeloop raises.

Every member derives from `ScopeloopError` and also from the built-in exception
that describes it best, so `except ValueError` keeps working for callers that do
not know scopeloop.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeviceError",
    "LimitError",
    "ScopeloopError",
]


class ScopeloopError(Exception):
    """Base class of every error scopeloop raises on purpose."""


class ConfigError(ScopeloopError, ValueError):
    """A configuration, plan or option has a bad value; the message names it."""


class LimitError(ScopeloopError, ValueError):
    """A value exceeds a hardware or safety limit (laser power, dose)."""


class DeviceError(ScopeloopError, RuntimeError):
    """A (simulated) device is missing, misconfigured or in the wrong state."""
