"""Results keyed by image content and options, committed by whichever process computed them.

A part is one image's result under ``<out>/.onnxviz-parts/<key[:2]>/<key>.npy`` (features) or
``.json`` (a map's results.json entry; the maps themselves are the per-image files), where
``key = sha256(options digest, sha256(image bytes), extra)``: a renamed or copied image is
found again, a changed one (or changed options) is computed anew. Parts are written
atomically, so a killed worker or driver leaves only whole parts and a rerun skips them.
Each process appends the keys it computed to its own journal (``journal-<host>-<pid>.txt``),
which says what was computed where, and lets tests count that nothing was computed twice.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import socket
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..io import to_jsonable

PARTS = ".onnxviz-parts"


def options_digest(options: dict) -> str:
    """SHA-256 of the canonical JSON of what results depend on (model hash, method, options...)."""
    text = json.dumps(to_jsonable(options), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_digest(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def part_key(options: str, content: str, extra: str = "") -> str:
    return hashlib.sha256(f"{options}\0{content}\0{extra}".encode("utf-8")).hexdigest()


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class PartStore:
    """One part per key under ``folder``: an ``.npy`` array or a ``.json`` text; safe for many writers at once."""

    def __init__(self, out: Union[str, Path]):
        self.folder = Path(out) / PARTS
        self._journal: Optional[io.TextIOBase] = None

    def path(self, key: str, kind: str = "npy") -> Path:
        return self.folder / key[:2] / f"{key}.{kind}"

    def has(self, key: str, kind: str = "npy") -> bool:
        return self.path(key, kind).is_file()

    def load_array(self, key: str) -> Optional[np.ndarray]:
        """The part's array, or None when it is missing or unreadable (then the image is computed again)."""
        try:
            return np.load(self.path(key, "npy"), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None

    def load_text(self, key: str) -> Optional[str]:
        try:
            text = self.path(key, "json").read_text(encoding="utf-8")
            json.loads(text)  # a short write after a power loss reads as missing
            return text
        except (OSError, ValueError):
            return None

    def save_array(self, key: str, array: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array), allow_pickle=False)
        self._write(key, "npy", buffer.getvalue())

    def save_text(self, key: str, text: str) -> None:
        self._write(key, "json", text.encode("utf-8"))

    def _write(self, key: str, kind: str, data: bytes) -> None:
        """Whole or not at all: a temp file renamed over the part; then the journal line.

        No fsync (unlike ``atomic_write``): the threat here is a killed process, which the page
        cache survives, and an fsync per image would cost more than computing a small one. After
        a power loss a part may be short; it then reads as missing and the image is redone.
        """
        path = self.path(key, kind)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            try:
                f = open(tmp, "wb")
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                f = open(tmp, "wb")
            with f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.journal(key)

    def journal(self, key: str) -> None:
        """Record that this process computed ``key`` (one line, flushed: it survives a kill)."""
        if self._journal is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._journal = open(self.folder / f"journal-{worker_id()}.txt", "a", encoding="utf-8")
        self._journal.write(key + "\n")
        self._journal.flush()

    def started(self, run: str) -> None:
        """Record that a worker process started for ``run`` (a restarted worker records again)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"starts-{run}.txt", "a", encoding="utf-8") as f:
            f.write(worker_id() + "\n")

    def starts(self, run: str, forget: bool = True) -> int:
        path = self.folder / f"starts-{run}.txt"
        try:
            n = len(path.read_text(encoding="utf-8").split())
        except FileNotFoundError:
            return 0
        if forget:
            path.unlink(missing_ok=True)
        return n

    def __getstate__(self):
        return {"folder": self.folder, "_journal": None}


def computed_keys(out: Union[str, Path]) -> list:
    """Every key any process recorded computing under ``out`` (one entry per computation)."""
    folder = Path(out) / PARTS
    keys = []
    for journal in sorted(folder.glob("journal-*.txt")):
        keys += journal.read_text(encoding="utf-8").split()
    return keys
