"""What happens to a trained model after training: export it, compress it.

Lazy on purpose: ``import polytask.lifecycle`` loads neither onnx, onnxruntime nor torchao; each
name below is imported from its own module on first use. Modules:

* :mod:`polytask.lifecycle.export`: ONNX / TorchScript / pt2 files, verified against PyTorch;
* :mod:`polytask.lifecycle.compress`: int8 quantisation and pruning of a run's model, measured;
* ``load_run_model``: a finished run's selected model (``checkpoints/best.pt``) and its data.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CompressResult",
    "EnsembleError",
    "EnsembleResult",
    "ExportError",
    "ExportResult",
    "ExtendError",
    "ExtendResult",
    "MetaConfig",
    "MetaResult",
    "MissingCheckpointError",
    "RunEnsemble",
    "RunModel",
    "VerificationError",
    "build_ensemble",
    "compress_run",
    "export_model",
    "extend_run",
    "load_compressed",
    "load_run_model",
    "run_meta",
    "verify_export",
]

_HOMES = {
    "ExtendError": "extend",
    "ExtendResult": "extend",
    "extend_run": "extend",
    "EnsembleError": "ensemble",
    "EnsembleResult": "ensemble",
    "RunEnsemble": "ensemble",
    "build_ensemble": "ensemble",
    "MetaConfig": "meta",
    "MetaResult": "meta",
    "run_meta": "meta",
    "ExportError": "export",
    "ExportResult": "export",
    "MissingCheckpointError": "_run",
    "RunModel": "_run",
    "load_run_model": "_run",
    "VerificationError": "export",
    "export_model": "export",
    "verify_export": "export",
    "CompressResult": "compress",
    "compress_run": "compress",
    "load_compressed": "compress",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'polytask.lifecycle' has no attribute {name!r}")
    return getattr(importlib.import_module(f"polytask.lifecycle.{home}"), name)
