"""Forward authentication (SPEC §11): the pipeline's decision without proxying.

nginx ``auth_request``, Traefik ``ForwardAuth``, Envoy ``ext_authz`` and
ingress-nginx send the gateway a copy of the client's request headers and ask
"may this request pass?". The answer is the proxy mode's, for the original
request: the same route, method, key, restriction, permission and rate-limit
checks in the same order, the same refusal (status, envelope,
``WWW-Authenticate``, ``Retry-After``, ``X-Request-Id``), and on success a
bodiless 200 carrying the ``X-Gateway-*`` identity headers, the rate-limit
headers and, for a key with credits, ``X-Credits-Remaining`` for the proxy to
copy. A check spends the route's ``cost`` of the plan's quota and the key's
credits as the proxied request would (SPEC §16): the check decides the
request, so the proxy in front must ask once per request it forwards.

The original request is read from:

- URI: ``X-Forwarded-Uri`` (Traefik), ``X-Original-URI`` (nginx
  ``auth_request`` examples), ``X-Original-URL`` (ingress-nginx: a whole URL,
  of which the path is used), else the path after ``/auth/check`` (Envoy
  ``ext_authz`` with a ``path_prefix``);
- method: ``X-Forwarded-Method`` or ``X-Original-Method``, else the check
  request's own;
- scheme: ``X-Forwarded-Proto``, believed only from ``server.trusted_proxies``
  (as in the proxy mode, so ``require_https`` is decided before this handler);
- client IP: the TCP peer, or behind trusted proxies the right-most untrusted
  ``X-Forwarded-For`` entry (SPEC §3).

An empty header is no description. Two descriptions that disagree (the URI
headers, or the two method headers) are 400 ``bad_request``, never "the first
one wins": nginx copies the client's own headers into its auth subrequest, so
a client-sent ``X-Forwarded-Uri`` must not outweigh nginx's ``X-Original-URI``.
A URI holding a fragment, a space, a control or a non-ASCII character is 400
too (SPEC §6).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from .checks.route import ROUTE_NOT_FOUND, method_denial
from .denials import SERVER, Denial, error_response
from .pipeline import Principal, RequestContext, attempt_for
from .proxy.paths import PathError, match_form, normalise_path

if TYPE_CHECKING:
    from .runtime import LocalHandler, Runtime

CHECK_PATH = "/auth/check"
URI_HEADERS = ("X-Forwarded-Uri", "X-Original-URI", "X-Original-URL")
METHOD_HEADERS = ("X-Forwarded-Method", "X-Original-Method")
ERROR_HEADER = "X-Gateway-Error"
_METHOD = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}$")  # an RFC 9110 token
# Not in a request target (RFC 9112 §3.2, RFC 3986): a fragment, a space, a
# control or a non-ASCII character (a byte >= 0x80 arrives decoded or escaped).
_UNSAFE_URI = re.compile(r"[^\x21-\x7e]|#")


class OriginalRequestError(ValueError):
    """The proxy's description of the original request cannot be used."""


def forward_auth_routes(runtime: Runtime, prefix: str) -> list[tuple[str, bool, LocalHandler]]:
    path = prefix + CHECK_PATH
    return [(path, True, ForwardAuth(runtime, path))]


class ForwardAuth:
    """The ``/auth/check`` handler: one access decision per call."""

    # Dispatched on the path as sent: below the check path is another request's path,
    # which normalising with the check path's own segments would misread (Envoy's form).
    judges_raw_path = True

    def __init__(self, runtime: Runtime, path: str):
        self.runtime = runtime
        self.path = path

    async def __call__(self, request: web.BaseRequest, ctx: RequestContext) -> web.Response:
        snapshot = self.runtime.snapshot
        headers = request.headers
        try:
            method = original_method(headers, request.method)
            path = original_path(headers, request.raw_path.partition("?")[0], self.path)
        except (OriginalRequestError, PathError) as exc:
            return self.refuse(Denial("bad_request", {"reason": str(exc)}), ctx)
        path = match_form(path)
        route = snapshot.router.match(path)
        if route is None:
            return self.refuse(ROUTE_NOT_FOUND, ctx)
        ctx.route = route
        denial = method_denial(route, method)
        if denial is not None:
            return self.refuse(denial, ctx)
        if not route.auth_required:
            return self.allow(None, ctx)
        attempt = attempt_for(
            ctx,
            headers,
            snapshot.trusted_proxies,
            route_name=route.name,
            required_permission=route.required_permission(method),
            route_rate_limit=route.rate_limit,
            method=method,
            path=path,
            cost=route.cost,
        )
        result = await self.runtime.pipeline.authenticate(attempt)
        if isinstance(result, Denial):
            return self.refuse(result, ctx)
        return self.allow(result, ctx)

    @staticmethod
    def allow(principal: Principal | None, ctx: RequestContext) -> web.Response:
        out = {"X-Request-Id": ctx.request_id, "Cache-Control": "no-store", "Server": SERVER}
        if principal is not None:
            ctx.principal = principal
            out.update(principal.key.upstream_headers)
            if principal.rate is not None:
                out.update(principal.rate.headers())
            if principal.credits is not None:
                out["X-Credits-Remaining"] = str(principal.credits)
        return web.Response(status=200, headers=out)

    @staticmethod
    def refuse(denial: Denial, ctx: RequestContext) -> web.Response:
        ctx.code = denial.code
        response = error_response(denial, ctx.request_id)
        # The envelope again, for proxies that relay headers but not the body
        # (nginx auth_request): the example configs answer with it.
        response.headers[ERROR_HEADER] = response.body.decode()  # type: ignore[union-attr]
        return response


def _single(headers, name: str) -> str | None:
    """One description header's value; an empty one counts as absent.

    Proxies blank the descriptions they do not send (nginx drops a header set
    to ``""``), so an empty value never describes anything.
    """
    values = headers.getall(name, ())
    if len(values) > 1:
        raise OriginalRequestError(f"{name} is sent more than once")
    if not values:
        return None
    return values[0].strip(" \t") or None


def _agreed(described: list[tuple[str, str]]) -> str | None:
    """The one value every description gives; two that differ are refused (SPEC §11).

    nginx copies the client's own headers into its auth subrequest: a
    client-sent description must never outweigh the proxy's.
    """
    if not described:
        return None
    first_name, first = described[0]
    for name, value in described[1:]:
        if value != first:
            raise OriginalRequestError(f"{first_name} and {name} describe different requests")
    return first


def original_method(headers, own: str) -> str:
    described = []
    for name in METHOD_HEADERS:
        method = _single(headers, name)
        if method is None:
            continue
        if not _METHOD.match(method):
            raise OriginalRequestError(f"{name} is not an HTTP method token")
        if method != method.upper():  # as the proxy mode refuses it: `delete` is DELETE to some
            raise OriginalRequestError(f"{name} must be upper case, as methods are sent")
        described.append((name, method))
    return _agreed(described) or own


def request_target(name: str, uri: str) -> str:
    """The request target (path and query) a URI header hands over; raises on an unsafe one.

    The URI must be what HTTP allows in a request line (SPEC §6): no fragment,
    no raw space, control or non-ASCII character. A proxy in front may cut at
    ``#`` where the gateway would not, and the two must never judge different
    paths. An absolute ``http(s)`` URL (ingress-nginx's ``X-Original-URL``)
    gives the part after its authority, which must be empty or start with
    ``/``: ingress-nginx builds that URL from the client's own ``Host``, and
    ``Host: x?`` would otherwise turn ``/admin`` into the path ``/``.
    """
    bad = _UNSAFE_URI.search(uri)
    if bad is not None:
        what = "a fragment" if bad.group() == "#" else "a space, control or non-ASCII character"
        raise OriginalRequestError(f"{name} holds {what}")
    if uri.startswith("/"):
        return uri
    try:
        parts = urlsplit(uri)  # an absolute URI: keep what follows the authority
    except ValueError as exc:  # e.g. an unclosed IPv6 literal
        raise OriginalRequestError(f"{name} is not a URL") from exc
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise OriginalRequestError(f"{name} must be a path or an http(s) URL")
    rest = uri[len(parts.scheme) + len("://") + len(parts.netloc) :]
    if not rest:
        return "/"
    if not rest.startswith("/"):
        raise OriginalRequestError(f"{name} has no path after its host")
    return rest


def original_path(headers, raw_path: str, prefix: str) -> str:
    """The original request's normalised path (SPEC §6); raises on an unsafe one.

    Without a URI header it is what follows ``prefix`` in the check request's
    path *as sent* (``raw_path``, no query), normalised on its own: Envoy sends
    ``prefix`` + the client's path unnormalised, so ``/auth/check/../admin``
    describes ``/../admin``, which escapes the root (400), never ``/admin``
    judged beside the check path.
    """
    described = []
    for name in URI_HEADERS:
        uri = _single(headers, name)
        if uri is not None:
            described.append((name, request_target(name, uri)))
    target = _agreed(described)
    if target is None:
        if raw_path != prefix and not raw_path.startswith(prefix + "/"):
            raise OriginalRequestError(
                f"no {', '.join(URI_HEADERS)}, and the path does not begin with {prefix} as sent"
            )
        return normalise_path(raw_path[len(prefix) :] or "/")
    return normalise_path(target.split("?", 1)[0])
