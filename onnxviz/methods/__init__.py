"""Visualization techniques, one module per family; each returns a typed result."""
