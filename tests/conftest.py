"""Pytest wiring: the shared fixtures live in helpers.py (importable by tests as `helpers`)."""

from helpers import exp

__all__ = ["exp"]
