"""Named hooks: features register handlers, the core fires names and never imports a feature.

As in Prosody, a hook is named after what happened (``user-removed``, ``roster-changed``).
Handlers run in registration order; one that raises is logged and the others still run.

Hooks sit on the hot paths (every chat message fires two or three), so firing a name nobody
listens to costs one dictionary lookup, and a name's handlers are kept as a tuple that is
replaced, never changed, when a handler comes or goes: a fire iterates it without copying,
and a handler added or removed meanwhile takes effect from the next fire.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger


class Hooks:
    log = Logger()

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Callable[..., Any], ...]] = {}

    def add(self, name: str, handler: Callable[..., Any]) -> None:
        self._handlers[name] = self._handlers.get(name, ()) + (handler,)

    def remove(self, name: str, handler: Callable[..., Any]) -> None:
        handlers = list(self._handlers.get(name, ()))
        if handler not in handlers:
            return
        handlers.remove(handler)
        if handlers:
            self._handlers[name] = tuple(handlers)
        else:
            del self._handlers[name]

    def collect(self, name: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Run every handler and return what each returned (a handler that raised is logged
        and left out): a feature contributes work, often Deferreds, that the firer waits on
        or orders, without knowing which features exist."""
        results = []
        for handler in self._handlers.get(name, ()):
            try:
                results.append(handler(*args, **kwargs))
            except Exception:
                self.log.failure("hook {name} handler {handler!r} failed", name=name,
                                 handler=handler)
        return results

    def fire(self, name: str, *args: Any, **kwargs: Any) -> None:
        handlers = self._handlers.get(name)
        if handlers is None:
            return
        for handler in handlers:
            try:
                handler(*args, **kwargs)
            except Exception:
                self.log.failure("hook {name} handler {handler!r} failed", name=name,
                                 handler=handler)
