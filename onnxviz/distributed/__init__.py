"""Dataset-scale analysis past one machine: picklable batch callables, Ray Data, ``--shard i/n``.

>>> from onnxviz.distributed import BatchExplainer
>>> ds.map_batches(BatchExplainer, fn_constructor_args=("model.onnx", "gradcam"), concurrency=4, batch_size=32)
"""
from .batch import BatchEmbedder, BatchEvaluator, BatchExplainer
from .engine import ENGINES, RAY_EXTRA, require_ray
from .jobs import Engine, EvaluateRun, ExplainRun, RunStats, embed_dataset, evaluate_dataset, explain_dataset
from .shard import Shard
from .store import PartStore, computed_keys

__all__ = ["BatchEmbedder", "BatchEvaluator", "BatchExplainer", "Engine", "Shard", "embed_dataset", "explain_dataset",
           "evaluate_dataset", "EvaluateRun", "ExplainRun", "RunStats", "PartStore", "computed_keys", "require_ray",
           "ENGINES", "RAY_EXTRA"]
