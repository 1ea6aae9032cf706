"""The optional C helpers (``kstap/capture/_ringfast.c``, ``kstap/_slices.c``): each function, or None.

A helper is missing where no compiler built it, and switched off with ``KSTAP_PURE_PYTHON=1``; every
caller then takes its pure-Python twin (tests run both).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any


def load(module: str, name: str) -> Callable[..., Any] | None:
    """``module``'s function ``name``, unless the module is missing or KSTAP_PURE_PYTHON=1."""
    if os.environ.get("KSTAP_PURE_PYTHON") == "1":
        return None
    try:
        found = importlib.import_module(module)
    except ImportError:
        return None
    fn: Callable[..., Any] | None = getattr(found, name, None)
    return fn
