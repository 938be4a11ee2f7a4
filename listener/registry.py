"""Handler registry: which async function runs which job kind, with which payload model.

Invariants:
- A kind is registered once per registry; registering it twice is an error, not an
  override.
- The worker claims only kinds present in its registry.
- A handler's payload model is the pydantic model annotated on its first parameter;
  a handler annotated with ``dict`` (or nothing) receives the raw JSON object.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from listener.errors import ConfigError

if TYPE_CHECKING:
    from listener.context import JobContext

HandlerFn = Callable[[Any, "JobContext"], Awaitable[Any]]
F = TypeVar("F", bound=HandlerFn)


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler."""

    kind: str
    fn: HandlerFn
    payload_model: type[BaseModel] | None

    def parse_payload(self, payload: dict[str, Any]) -> Any:
        """Validate the job's payload; raises pydantic.ValidationError when invalid."""
        if self.payload_model is None:
            return payload
        return self.payload_model.model_validate(payload)


def _payload_model(fn: HandlerFn) -> type[BaseModel] | None:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) != 2:
        raise ConfigError(
            f"handler {fn.__qualname__} must take exactly (payload, ctx), "
            f"it takes {len(params)} parameters"
        )
    try:
        hints = typing.get_type_hints(fn)
    except NameError as exc:
        raise ConfigError(
            f"cannot resolve the payload annotation of handler {fn.__qualname__} ({exc}); "
            "define the model at module level or pass it with @handler(kind, payload=Model)"
        ) from None
    annotation = hints.get(params[0].name)
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    return None


class Registry:
    """Maps job kinds to handlers."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(
        self, kind: str, fn: HandlerFn, *, payload: type[BaseModel] | None = None
    ) -> Handler:
        """Register ``fn`` for ``kind``; ``payload`` overrides the annotated model."""
        if not kind.strip():
            raise ConfigError("a handler kind must not be empty")
        if kind in self._handlers:
            existing = self._handlers[kind].fn
            raise ConfigError(
                f"kind {kind!r} is already handled by {existing.__module__}.{existing.__qualname__}"
            )
        if not inspect.iscoroutinefunction(fn):
            raise ConfigError(f"handler for {kind!r} must be an async function")
        model = payload if payload is not None else _payload_model(fn)
        handler = Handler(kind=kind, fn=fn, payload_model=model)
        self._handlers[kind] = handler
        return handler

    def handler(self, kind: str, *, payload: type[BaseModel] | None = None) -> Callable[[F], F]:
        """Decorator form of :meth:`register`."""

        def decorate(fn: F) -> F:
            self.register(kind, fn, payload=payload)
            return fn

        return decorate

    def get(self, kind: str) -> Handler | None:
        """The handler for ``kind``, or None."""
        return self._handlers.get(kind)

    def kinds(self) -> list[str]:
        """Registered kinds, sorted."""
        return sorted(self._handlers)

    def restricted_to(self, kinds: Iterable[str]) -> Registry:
        """A registry with only ``kinds``; an unknown kind is a configuration error."""
        wanted = list(kinds)
        unknown = sorted(set(wanted) - set(self._handlers))
        if unknown:
            raise ConfigError(
                f"no handler for kind(s) {', '.join(unknown)}; "
                f"known kinds: {', '.join(self.kinds()) or 'none'}"
            )
        restricted = Registry()
        for kind in wanted:
            restricted._handlers[kind] = self._handlers[kind]
        return restricted


DEFAULT_REGISTRY = Registry()


def load_modules(modules: Iterable[str]) -> None:
    """Import handler modules so their ``@handler`` decorators register. The current
    directory is importable, as for ``python -m``, so ``--handlers my_app.jobs`` finds
    ``./my_app/jobs.py``."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for name in modules:
        try:
            importlib.import_module(name)
        except (ImportError, SyntaxError) as exc:
            raise ConfigError(f"cannot import handler module {name!r}: {exc}") from exc
