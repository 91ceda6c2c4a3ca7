"""The package version: one place, read by setup.cfg (attr:), the CLI and the report."""
__version__ = "0.1.0"
