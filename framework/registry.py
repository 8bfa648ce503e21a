"""Name -> builder maps, so a config or recipe names a component and never imports it."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Bad input from the user (config, CLI, missing data). The CLI prints it in one line and exits 2."""


def suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str):
        def add(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._builders[name] = builder
            return builder
        return add

    def names(self) -> list[str]:
        return sorted(self._builders)

    def check(self, name: str, key: str) -> None:
        if name not in self._builders:
            raise UserError(
                f"{key}: unknown {self.kind} '{name}'{suggest(name, self._builders)}; "
                f"choices: {', '.join(self.names())}")

    def get(self, name: str, key: str | None = None) -> Callable[..., T]:
        self.check(name, key or self.kind)
        return self._builders[name]

    def __contains__(self, name: str) -> bool:
        return name in self._builders
