"""Backward rules: reduce."""
from __future__ import annotations

RULES: dict = {}
