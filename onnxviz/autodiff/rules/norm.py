"""Backward rules: norm."""
from __future__ import annotations

RULES: dict = {}
