"""Backward rules: pool."""
from __future__ import annotations

RULES: dict = {}
