"""A model loaded with its preprocessing and labels, as the commands and the dataset engines use it.

The settings come from explicit options first, then the sidecar JSON shipped beside the model
(``<name>.json``). This is library code: it raises :class:`OnnxvizError` (the CLI turns those into
one-line errors) and knows nothing of click.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .errors import NonFiniteError, OnnxvizError
from .finite import nonfinite_weights
from .images import Preprocess, geometries, load_labels, preprocess, read_image
from .io import inside, label, protect, regular_file
from .loading import CONVERSION_FAILED
from .model import load

log = logging.getLogger("onnxviz")


# The sidecar's fields and the JSON types each may have (size: one int or [height, width]).
SIDECAR_FIELDS = {
    "labels": (str,),
    "preprocess": (dict,),
    "preprocess.norm": (str,),
    "preprocess.resize": (str,),
    "preprocess.crop": (int, float),
    "preprocess.bgr": (bool,),
    "preprocess.size": (int, list),
}


def sidecar(model_path: str) -> dict:
    """Settings shipped beside a model as <name>.json: {"preprocess": {...}, "labels": "file"}.

    The labels path is resolved like ONNX external data: relative to the model's folder and
    inside it. A sidecar that is not a JSON object or has a field of the wrong type is an error
    naming the field: silently ignoring it would change the preprocessing behind the user's back.
    """
    path = Path(model_path).with_suffix(".json")
    if not path.exists() and not path.is_symlink():
        return {}
    regular_file(path, "sidecar JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise OnnxvizError(f"sidecar {path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise OnnxvizError(f"sidecar {path} is not valid JSON: {exc}") from None
    protect(path)
    if not isinstance(data, dict):
        raise OnnxvizError(f"sidecar {path} must be a JSON object, not {_json_type(data)}")
    for name, types in SIDECAR_FIELDS.items():
        head, _, tail = name.partition(".")
        value = data.get(head) if not tail else (data.get(head) or {}).get(tail)
        if value is None:
            continue
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            wanted = " or ".join(_JSON_NAMES[t] for t in types)
            raise OnnxvizError(f"sidecar {path}: field {name!r} must be {wanted}, not {_json_type(value)}")
    size = (data.get("preprocess") or {}).get("size")
    if isinstance(size, list) and not (len(size) in (1, 2) and all(type(v) is int and v > 0 for v in size)):
        raise OnnxvizError(f"sidecar {path}: field 'preprocess.size' must be [height, width] positive integers")
    if isinstance(size, int) and (isinstance(size, bool) or size <= 0):
        raise OnnxvizError(f"sidecar {path}: field 'preprocess.size' must be a positive integer")
    if isinstance(data.get("labels"), str):
        data["labels"] = str(inside(path.parent, data["labels"], f"sidecar {path}: field 'labels'"))
    return data


_JSON_NAMES = {str: "a string", dict: "an object", int: "a number", float: "a number", bool: "true/false",
               list: "a list"}


def _json_type(value) -> str:
    if value is None:
        return "null"
    return _JSON_NAMES.get(type(value), type(value).__name__)


@dataclass
class Session:
    """A model with its preprocessing and labels (from options or the sidecar)."""

    model: object
    pre: Preprocess
    labels: Optional[list]
    nonfinite: Optional[str] = None  # the first NaN/inf weight, described (open_session scans them once)

    def label(self, k: int) -> str:
        return label(self.labels, k)

    def batch(self, paths: Sequence[str]):
        """Read and preprocess images: (x, originals, geometries)."""
        images = [read_image(p) for p in paths]
        return preprocess(images, self.model.input, self.pre), images, geometries(images, self.model.input, self.pre)


def open_session(model_path, device="auto", threads=None, layout=None, size=None, norm=None, mean=None,
                 std=None, scale="1", resize=None, crop=None, bgr=None, labels=None, verify=True, finite=True,
                 **_) -> Session:
    """Load the model and work out preprocessing from options, falling back on the sidecar JSON.

    ``finite``: refuse a model whose weights hold NaN or inf (every result would be meaningless).
    """
    side = sidecar(model_path)
    pre_side = side.get("preprocess", {})
    height, width = size if size else (None, None)
    model = load(model_path, device=device, threads=threads, layout=layout, height=height, width=width,
                 verify=verify)
    for note in model.notes:  # a failed conversion is said as such, before any downstream symptom
        (log.warning if note.startswith(CONVERSION_FAILED) else log.info)("%s", note)
    bad = nonfinite_weights(model.proto)
    if bad and finite:
        raise NonFiniteError(f"the model's {bad}: every output and gradient would be meaningless")
    if bad:
        log.warning("the model's %s", bad)
    side_size = pre_side.get("size")
    pre = Preprocess.from_options(
        norm=norm or (None if (mean or std) else pre_side.get("norm")),
        mean=mean, std=std, scale=int(scale),
        resize=resize or pre_side.get("resize", "shorter"),
        crop=crop or pre_side.get("crop", 1.0),
        bgr=bgr if bgr is not None else pre_side.get("bgr"),
        size=size or (_side_size(side_size) if side_size and model.input.size is None else None),
    )
    if model.input.size is None and pre.size:  # a dynamic-size model is analysed at the sidecar's size
        model.analysis_size = tuple(pre.size)
    label_path = labels or side.get("labels")
    names = None
    if label_path:
        protect(label_path)
        names = load_labels(regular_file(label_path, "label file"))
        _check_label_count(model, names, label_path)
    return Session(model, pre, names, bad)


def _side_size(size) -> tuple:
    return (size, size) if isinstance(size, int) else tuple(size) * (2 if len(size) == 1 else 1)


def _check_label_count(model, names: list, path) -> None:
    """A label file for another model names the wrong classes: say so (a warning, the user may know)."""
    shape = model.tensor_shape(model.outputs[0]) if model.outputs else None
    classes = shape[-1] if shape and len(shape) == 2 else None
    if isinstance(classes, int) and classes != len(names):
        log.warning("the label file %s has %d names but output %r has %d classes", path, len(names),
                    model.outputs[0], classes)
