"""One registry mechanism for every kind of pluggable backend (segmenters, captioners, inpainters).

A backend registers itself where it is defined::

    @SEGMENTERS.register("onnx")
    class OnnxSegmenter: ...

and config validation asks the registry of its kind (:func:`registry_for`), importing the owning module
lazily, so a new backend is one class plus its test: no list of names to keep in step anywhere else.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# The module that defines (and registers) every backend of a kind.
OWNERS = {
    "segment": "canvas_ray.stages.segment",
    "caption": "canvas_ray.stages.caption",
    "inpaint": "canvas_ray.stages.inpaint",
}


class Registry(Generic[T]):
    """Backends of one kind by name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def wrap(cls: type[T]) -> type[T]:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.kind} backend {name!r} registered twice")
            self._entries[name] = cls
            return cls

        return wrap

    def names(self) -> list[str]:
        return sorted(self._entries)

    def check(self, name: str) -> str:
        if name not in self._entries:
            raise ValueError(f"{self.kind}.backend {name!r} unknown; choose one of {self.names()}")
        return name

    def get(self, name: str) -> type[T]:
        return self._entries[self.check(name)]

    def build(self, name: str, *args: Any, **kwargs: Any) -> T:
        return self.get(name)(*args, **kwargs)


def registry_for(kind: str) -> Registry[Any]:
    """The registry of ``kind`` (``segment``, ``caption``, ``inpaint``), its backends registered."""
    module = importlib.import_module(OWNERS[kind])
    registry = module.BACKENDS
    assert isinstance(registry, Registry)
    return registry
