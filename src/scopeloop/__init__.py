"""scopeloop: closed-loop smart microscopy on pymmcore-plus."""

__version__ = "0.1.0"

__all__ = ["__version__"]
