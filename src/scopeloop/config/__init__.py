"""Validated settings: pydantic models read from the command line and from files."""

from ._simulation import OutputFormat, SimulationOptions

__all__ = ["OutputFormat", "SimulationOptions"]
