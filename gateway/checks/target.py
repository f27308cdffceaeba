"""The request target and its path (SPEC §6): strict syntax, then one normalisation."""

from __future__ import annotations

from ..denials import Denial
from ..proxy.paths import PathError, match_form, normalise_path


class TargetError(ValueError):
    """The request target is not one HTTP allows, or its path cannot be normalised safely."""


def strict_target(raw: str) -> None:
    """Refuse a fragment, a raw space, a control or a non-ASCII character (RFC 9112 §3.2).

    A proxy in front may cut at ``#`` where the gateway would not; the two must
    never judge different paths.
    """
    if not raw.isascii() or not raw.isprintable() or " " in raw or "#" in raw:
        raise TargetError(
            "the request target holds a fragment, space, control or non-ASCII character"
        )


def split_target(raw: str) -> tuple[str, str, str]:
    """``(path, match path, query)`` of a raw origin-form target already through
    :func:`strict_target`; raises :class:`TargetError`."""
    if not raw.startswith("/"):
        raise TargetError("the request target must be a path (origin form)")
    raw_path, _, query = raw.partition("?")
    try:
        path = normalise_path(raw_path)
    except PathError as exc:
        raise TargetError(str(exc)) from None
    return path, match_form(path), query


def target_denial(exc: TargetError) -> Denial:
    return Denial("bad_request", {"reason": str(exc)})
