"""``--shard i/n``: a deterministic slice of a folder, for jobs scheduled without Ray (SLURM arrays, k8s jobs).

A file belongs to shard ``sha1(relative path) mod n``: the same file lands in the same shard
on every machine and in every run, whatever else the folder holds, so adding images never
moves finished ones to another job.

>>> Shard.parse("0/2").contains("cat/1.jpg")
True
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..datasets import Dataset
from ..errors import OnnxvizError


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """"i/n" with 0 <= i < n."""
        try:
            i, n = (int(p) for p in str(text).split("/"))
        except ValueError:
            raise OnnxvizError(f"--shard {text!r}: expected i/n, e.g. 0/4 (shard 0 of 4)") from None
        if n < 1 or not 0 <= i < n:
            raise OnnxvizError(f"--shard {text!r}: need 0 <= i < n (shards are numbered from 0)")
        return cls(i, n)

    def contains(self, relative_path: str) -> bool:
        digest = hashlib.sha1(relative_path.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    def indices(self, dataset: Dataset) -> np.ndarray:
        """Indices (into ``dataset.files``) of this shard's images, in path order."""
        return np.array([i for i, f in enumerate(dataset.files) if self.contains(f.path)], dtype=np.int64)

    @property
    def name(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
