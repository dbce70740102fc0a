"""vend: a static-content federation server (see README.md)."""

__version__ = "0.1.0"
"""vend's version (the package's, read by hatchling from here)."""
