"""Package attributes loaded on first use, so that the command line can import a package's configs
without the torch-dependent modules beside them."""
from __future__ import annotations

import importlib
import sys
from typing import Callable


def lazy_attributes(package: str, where: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` for `package`: attribute `name` is imported from its submodule
    `where[name]` the first time it is read, then kept in the package."""
    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{where[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
