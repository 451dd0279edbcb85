"""Multi-phase liver CT phantom: the built-in dataset for demos, tests and benchmarks.

The names below are loaded on first use (PEP 562), so that importing the light settings module
(``phantom.config``, e.g. for ``diff4mm_phantom --help``) does not load the generator and scipy."""
from __future__ import annotations

import importlib

_HOMES = {"PhantomCase": "dataset", "PhantomFolderError": "dataset", "case_name": "dataset",
          "generate_case": "dataset", "write_case": "dataset", "write_phantom_dataset": "dataset",
          "PhantomConfig": "config", "PHASES": "tissues", "REFERENCE_PHASE": "tissues"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
