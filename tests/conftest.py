"""Pytest wiring: the shared fixtures live in helpers.py (importable by tests as `helpers`)."""

from helpers import exp, no_leftovers

__all__ = ["exp", "no_leftovers"]
