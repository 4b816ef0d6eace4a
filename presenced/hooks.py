"""Named hooks: features register handlers, the core fires names and never imports a feature.

As in Prosody, a hook is named after what happened (``user-removed``, ``roster-changed``).
Handlers run in registration order; one that raises is logged and the others still run.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

from twisted.logger import Logger


class Hooks:
    log = Logger()

    def __init__(self) -> None:
        self._handlers: dict[str, list[Callable[..., Any]]] = defaultdict(list)

    def add(self, name: str, handler: Callable[..., Any]) -> None:
        self._handlers[name].append(handler)

    def remove(self, name: str, handler: Callable[..., Any]) -> None:
        if handler in self._handlers.get(name, ()):
            self._handlers[name].remove(handler)

    def collect(self, name: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Run every handler and return what each returned (a handler that raised is logged
        and left out): a feature contributes work, often Deferreds, that the firer waits on
        or orders, without knowing which features exist."""
        results = []
        for handler in list(self._handlers.get(name, ())):
            try:
                results.append(handler(*args, **kwargs))
            except Exception:
                self.log.failure("hook {name} handler {handler!r} failed", name=name,
                                 handler=handler)
        return results

    def fire(self, name: str, *args: Any, **kwargs: Any) -> None:
        for handler in list(self._handlers.get(name, ())):
            try:
                handler(*args, **kwargs)
            except Exception:
                self.log.failure("hook {name} handler {handler!r} failed", name=name,
                                 handler=handler)
