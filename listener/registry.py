"""Handler registry: which async function runs which job kind, with which payload model.

Invariants:
- A kind is registered once per registry; registering it twice is an error, not an
  override, with one exception: a built-in kind (registered with ``builtin=True``, as
  handlers/builtin.py does) gives way to an application's handler of the same name,
  whichever is imported first, and the registry logs that it did. Workers without
  such a handler keep the built-in.
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
    builtin: bool = False

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


def _name(fn: HandlerFn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _log_override(app: Handler, builtin: Handler) -> None:
    """Say that the application's handler replaces a built-in kind in this process."""
    from listener.logs import get_logger  # noqa: PLC0415 - logs is imported when a worker runs

    get_logger("registry").info(
        "application handler replaces the built-in kind",
        kind=app.kind,
        handler=_name(app.fn),
        builtin=_name(builtin.fn),
    )


class Registry:
    """Maps job kinds to handlers."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(
        self,
        kind: str,
        fn: HandlerFn,
        *,
        payload: type[BaseModel] | None = None,
        builtin: bool = False,
    ) -> Handler:
        """Register ``fn`` for ``kind``; ``payload`` overrides the annotated model.
        A ``builtin`` handler yields to an application's handler of the same kind (see
        the module docstring); any other second registration of a kind is an error."""
        if not kind.strip():
            raise ConfigError("a handler kind must not be empty")
        if not inspect.iscoroutinefunction(fn):
            raise ConfigError(f"handler for {kind!r} must be an async function")
        model = payload if payload is not None else _payload_model(fn)
        handler = Handler(kind=kind, fn=fn, payload_model=model, builtin=builtin)
        existing = self._handlers.get(kind)
        if existing is not None:
            if existing.builtin and not builtin:
                _log_override(handler, existing)
            elif builtin and not existing.builtin:
                _log_override(existing, handler)
                return existing
            else:
                raise ConfigError(f"kind {kind!r} is already handled by {_name(existing.fn)}")
        self._handlers[kind] = handler
        return handler

    def handler(
        self, kind: str, *, payload: type[BaseModel] | None = None, builtin: bool = False
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`register`."""

        def decorate(fn: F) -> F:
            self.register(kind, fn, payload=payload, builtin=builtin)
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
