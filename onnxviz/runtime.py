"""onnxruntime sessions: provider choice, caching per rewritten graph, batched runs."""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

import onnx

from .errors import OnnxvizError, OptionError

log = logging.getLogger("onnxviz")

DEVICES = ("auto", "cpu", "cuda")
# names of ort.GraphOptimizationLevel members, looked up when a session is made
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
_TWO_GB = 2**31 - 2**26  # protobuf's limit, with room for the rest of the message
SHAPE_VARIANTS = 2  # shape-specialized sessions kept per graph: a batch size and the last, smaller chunk


def onnxruntime():
    """The onnxruntime module, imported on first use: `onnxviz --help` and the pure-graph code
    (inspect's tables, export-grad) start without paying its import (a second or more)."""
    try:
        import onnxruntime as ort

        # onnxruntime's own logger prints "[E:onnxruntime:...]" lines to stderr beside the
        # one-line error we raise for the same failure; only fatal ones stay.
        ort.set_default_logger_severity(4)
    except ImportError:  # pragma: no cover - exercised only without the extra installed
        raise ImportError(
            "onnxviz needs ONNX Runtime: pip install 'onnxviz[cpu]' (or 'onnxviz[gpu]' for CUDA)"
        ) from None
    return ort


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in onnxruntime().get_available_providers()


def resolve_device(device: str) -> str:
    """'auto' becomes 'cuda' when onnxruntime-gpu sees a GPU, else 'cpu'."""
    if device not in DEVICES:
        raise OptionError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise OnnxvizError(
            "device 'cuda' asked for, but onnxruntime has no CUDA provider here "
            f"(available: {', '.join(onnxruntime().get_available_providers())}). "
            "Install onnxviz[gpu] (onnxruntime-gpu, not onnxruntime) on a machine with an NVIDIA GPU."
        )
    return device


class Runtime:
    """Creates and caches onnxruntime sessions for one device.

    >>> rt = Runtime("cpu", threads=2)
    >>> outputs = rt.run(model_proto, {"image": x})
    """

    def __init__(self, device: str = "auto", threads: Optional[int] = None, optimization: str = "all"):
        self.device = resolve_device(device)
        if optimization not in OPT_LEVELS:
            raise OptionError(f"unknown optimization level {optimization!r}: choose from {', '.join(OPT_LEVELS)}")
        self.threads = threads
        self.optimization = optimization
        self._sessions: dict = {}
        self._tmp: list[tempfile.TemporaryDirectory] = []

    @property
    def providers(self) -> list:
        if self.device == "cuda":
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def describe(self) -> str:
        return f"onnxruntime {onnxruntime().__version__} on {self.device} ({self.providers[0]})"

    def _options(self):
        ort = onnxruntime()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[self.optimization])
        opts.log_severity_level = 4
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if self.device == "cpu":
            # Idle spinning threads would take the cores that image decoding and numpy need
            # between runs; measured 25-45% faster feature extraction, no slower forward.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    def session(self, model: onnx.ModelProto, key: Optional[str] = None,
                fixed: Optional[Mapping[str, np.ndarray]] = None):
        """The session for ``model``, created once per key (default: a hash of the graph).

        ``fixed``: feeds whose shapes the session is specialized to (every symbolic input dim
        set to its size there), one session per distinct set of sizes, the
        :data:`SHAPE_VARIANTS` most recent kept. For gradient graphs: onnxruntime keeps an
        element-wise op of two tensors in its blocked NCHWc layout only when it can prove
        their shapes equal, and the forward and backward halves share no symbolic dim it can
        trace, so with a symbolic batch every mask product leaves the layout and comes back.
        These sessions also allocate tensor by tensor instead of from onnxruntime's
        precomputed memory pattern: a gradient graph keeps activations alive across the
        whole run, and the planned block held 1.3-1.7x more (peak growth over the loaded
        model, B=8: ResNet-50 1604 -> 1233 MB, DenseNet-121 2063 -> 1181 MB) at the same speed.
        """
        if key is None:
            data = _serialized(model, deterministic=True)
            key = hashlib.sha1(data).hexdigest() if data is not None else str(id(model))
        sizes = symbolic_sizes(model, fixed) if fixed is not None else ()
        variants = self._sessions.setdefault(key, {})
        sess = variants.pop(sizes, None)
        if sess is None:
            sess = self._create(model, sizes=sizes, planned=False) if fixed is not None else self._create(model)
            while len(variants) >= SHAPE_VARIANTS:
                variants.pop(next(iter(variants)))
        variants[sizes] = sess  # most recently used last
        return sess

    def forget(self, key: str):
        """Drop a cached session (its graph changed), with its shape-specialized variants."""
        self._sessions.pop(key, None)

    def run_once(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict:
        """Run ``model`` once on a session that is not kept, with priority-based node order.

        For probe graphs (Shape of many tensors): onnxruntime's default order runs side branches
        that end in outputs after the whole graph, holding every activation they read until then;
        priority-based order runs them as soon as they can (measured on DenseNet-121 at 448x448:
        1.3 GB against 0.13 GB, a plain forward pass 0.04 GB).
        """
        sess = self._create(model, early=True)
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, self._run(sess, names, feeds)))

    def _create(self, model: onnx.ModelProto, early: bool = False, sizes: tuple = (), planned: bool = True):
        ort = onnxruntime()
        options = self._options()
        options.enable_mem_pattern = planned
        for name, size in sizes:
            options.add_free_dimension_override_by_name(name, size)
        if early and hasattr(ort, "ExecutionOrder"):
            options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        try:
            data = _serialized(model)
            if data is not None:
                return ort.InferenceSession(data, options, providers=self.providers)
            tmp = tempfile.TemporaryDirectory(prefix="onnxviz-")
            self._tmp.append(tmp)
            path = os.path.join(tmp.name, "model.onnx")
            onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin")
            return ort.InferenceSession(path, options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise OnnxvizError(f"onnxruntime could not load the graph: {_first_line(exc)}") from exc

    def run(
        self,
        model: onnx.ModelProto,
        feeds: Mapping[str, np.ndarray],
        outputs: Optional[Sequence[str]] = None,
        batch_size: Optional[int] = None,
        progress: bool = False,
        key: Optional[str] = None,
        desc: str = "running",
        fixed_shapes: bool = False,
    ) -> dict:
        """Run ``model`` on ``feeds``, in chunks of ``batch_size`` along axis 0 when given.

        ``fixed_shapes``: run each chunk on a session specialized to its input shapes (see
        :meth:`session`).
        """
        def session_for(part):
            return self.session(model, key, fixed=part if fixed_shapes else None)

        names = list(outputs) if outputs else [o.name for o in model.graph.output]
        n = _batch_len(feeds)
        if not batch_size or n is None or n <= batch_size:
            return dict(zip(names, self._run(session_for(feeds), names, feeds)))
        chunks: list[list[np.ndarray]] = []
        for start in _progress(range(0, n, batch_size), progress, desc, unit_scale=batch_size):
            part = {k: v[start:start + batch_size] if _batched(v, n) else v for k, v in feeds.items()}
            chunks.append(self._run(session_for(part), names, part))
        return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(names)}

    @staticmethod
    def _run(sess, names, feeds) -> list:
        options = onnxruntime().RunOptions()
        options.log_severity_level = 4  # the failure is raised below as one line; no "[E:onnxruntime]" too
        try:
            return sess.run(names, dict(feeds), options)
        except Exception as exc:
            raise OnnxvizError(f"onnxruntime failed: {_first_line(exc)}") from exc


def symbolic_sizes(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> tuple:
    """((dim name, size), ...) for the symbolic input dims of ``model`` as ``feeds`` fill them.

    A name given two different sizes (a broadcast input) is left symbolic.
    """
    sizes: dict = {}
    clashes = set()
    for vi in model.graph.input:
        if vi.name not in feeds or not vi.type.HasField("tensor_type"):
            continue
        shape = np.shape(feeds[vi.name])
        for dim, size in zip(vi.type.tensor_type.shape.dim, shape):
            if dim.dim_param and sizes.setdefault(dim.dim_param, size) != size:
                clashes.add(dim.dim_param)
    return tuple(sorted((k, int(v)) for k, v in sizes.items() if k not in clashes))


def _batched(v: np.ndarray, n: int) -> bool:
    return isinstance(v, np.ndarray) and v.ndim > 0 and v.shape[0] == n


def _batch_len(feeds: Mapping[str, np.ndarray]) -> Optional[int]:
    lens = {v.shape[0] for v in feeds.values() if isinstance(v, np.ndarray) and v.ndim > 0}
    return max(lens) if lens else None


def _progress(it: Iterable, enabled: bool, desc: str, unit_scale: int = 1):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _serialized(model: onnx.ModelProto, deterministic: bool = False) -> Optional[bytes]:
    """The model's bytes, or None over protobuf's 2 GB limit. Serializing and failing is cheaper
    than asking first: ByteSize() costs as much as serializing (0.3-0.6 s on a ResNet-50)."""
    from google.protobuf.message import EncodeError

    try:
        data = model.SerializeToString(deterministic=deterministic)
    except (EncodeError, ValueError):
        return None
    return data if len(data) < _TWO_GB else None
