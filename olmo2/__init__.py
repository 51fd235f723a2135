"""olmo2: the OLMo 2 language model from raw text to a laptop.

    from olmo2 import Olmo2, Tokenizer
    model = Olmo2.from_pretrained("DIR or hub id")
    tok = Tokenizer.from_pretrained("DIR or hub id")

The public names are resolved lazily (PEP 562 module `__getattr__`): importing any
`olmo2.*` module runs this file first, and an eager `import torch` here cost every
`olmo2 --help` and argument error ~4 s. `from olmo2 import Olmo2` still works and imports
torch then. Footgun: add a new public name to `_PUBLIC`, not as an import at the top.
"""
from __future__ import annotations

import importlib

# public name -> module that defines it
_PUBLIC = {
    "Olmo2": "olmo2.model",
    "Tokenizer": "olmo2.tokenizer",
    "ModelConfig": "olmo2.config",
    "PRESETS": "olmo2.config",
    "preset": "olmo2.config",
    "load_model": "olmo2.checkpoint",
    "save_model": "olmo2.checkpoint",
    "Olmo2Error": "olmo2.errors",
}

__all__ = list(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'olmo2' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolve once; later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
