"""The one table from a denial to what the client sees (SPEC §4).

Checks return a :class:`Denial`; only the request handler turns it into a
response, through :func:`error_response`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Fault:
    status: int
    type: str
    message: str
    challenge: str | None = None  # RFC 6750 `error` attribute, "" for a bare challenge
    retry_after: int | None = None  # seconds, when the answer always says when to come back


FAULTS: dict[str, Fault] = {
    "https_required": Fault(403, "permission_error", "HTTPS is required"),
    "bad_request": Fault(
        400, "invalid_request_error", "The request path cannot be processed safely"
    ),
    "invalid_request": Fault(400, "invalid_request_error", "The request is invalid"),
    "route_not_found": Fault(404, "invalid_request_error", "No route matches this path"),
    "resource_not_found": Fault(404, "invalid_request_error", "No such resource"),
    "key_not_active": Fault(
        409, "invalid_request_error", "The key is revoked or expired: it cannot be changed"
    ),
    "method_not_allowed": Fault(
        405, "invalid_request_error", "This method is not allowed on this route"
    ),
    "payload_too_large": Fault(413, "invalid_request_error", "The request body is too large"),
    "request_timeout": Fault(
        408, "invalid_request_error", "The request body stopped arriving before its end"
    ),
    "uri_too_long": Fault(414, "invalid_request_error", "The request URL is too long"),
    "request_header_fields_too_large": Fault(
        431, "invalid_request_error", "The request headers are too large or too many"
    ),
    "invalid_signature": Fault(
        401, "authentication_error", "The request's signature is missing or invalid"
    ),
    "missing_api_key": Fault(401, "authentication_error", "No API key provided", ""),
    "invalid_authorization_header": Fault(
        401,
        "authentication_error",
        "The Authorization header must be 'Bearer <api key>'",
        "invalid_request",
    ),
    "invalid_api_key": Fault(
        401, "authentication_error", "Invalid API key provided", "invalid_token"
    ),
    "revoked_api_key": Fault(
        401, "authentication_error", "API key has been revoked", "invalid_token"
    ),
    "expired_api_key": Fault(401, "authentication_error", "API key has expired", "invalid_token"),
    "ip_not_allowed": Fault(
        403, "permission_error", "This API key cannot be used from this IP address"
    ),
    "referrer_not_allowed": Fault(
        403, "permission_error", "This API key cannot be used from this referrer"
    ),
    "endpoint_not_allowed": Fault(
        403, "permission_error", "This API key cannot be used on this endpoint"
    ),
    "insufficient_permissions": Fault(
        403,
        "permission_error",
        "This API key lacks permission to perform this action",
        "insufficient_scope",
    ),
    "last_admin_key": Fault(
        409,
        "invalid_request_error",
        "This change would leave the account without an active admin key",
    ),
    "cors_not_allowed": Fault(
        403, "permission_error", "This origin, method or header is not allowed (CORS)"
    ),
    "rate_limit_exceeded": Fault(429, "rate_limit_error", "Rate limit exceeded"),
    "quota_exceeded": Fault(
        429, "rate_limit_error", "The account's quota for this period is used up"
    ),
    "credits_exhausted": Fault(
        429, "rate_limit_error", "The API key has not enough credits left for this request"
    ),
    "auth_backend_unavailable": Fault(
        503, "api_error", "The key store is unavailable; try again shortly", retry_after=5
    ),
    "service_unavailable": Fault(503, "api_error", "The upstream is temporarily unavailable"),
    "upstream_unavailable": Fault(502, "api_error", "The upstream service is unavailable"),
    "upstream_timeout": Fault(504, "api_error", "The upstream service did not answer in time"),
    "internal_error": Fault(500, "api_error", "Internal error"),
}

REALM = "api"
SERVER = "keygate"  # the Server header of the gateway's own answers: no software version


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a request is refused: a code from :data:`FAULTS` and details for the body."""

    code: str
    details: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    message: str | None = None

    @property
    def status(self) -> int:
        return FAULTS[self.code].status


def challenge_header(denial: Denial) -> str | None:
    fault = FAULTS[denial.code]
    if fault.challenge is None:
        return None
    value = f'Bearer realm="{REALM}"'
    if fault.challenge:
        value += f', error="{fault.challenge}"'
    if fault.challenge == "insufficient_scope" and "required_permission" in denial.details:
        value += f', scope="{denial.details["required_permission"]}"'
    return value


def error_body(denial: Denial, request_id: str) -> bytes:
    fault = FAULTS[denial.code]
    return json.dumps(
        {
            "error": {
                "type": fault.type,
                "code": denial.code,
                "message": denial.message or fault.message,
                "details": denial.details,
            },
            "meta": {"request_id": request_id},
        },
        separators=(",", ":"),
    ).encode()


def error_response(denial: Denial, request_id: str) -> web.Response:
    fault = FAULTS[denial.code]
    response = web.Response(
        status=fault.status,
        body=error_body(denial, request_id),
        content_type="application/json",
    )
    response.headers["X-Request-Id"] = request_id
    response.headers["Cache-Control"] = "no-store"
    response.headers["Server"] = SERVER
    challenge = challenge_header(denial)
    if challenge:
        response.headers["WWW-Authenticate"] = challenge
    if fault.retry_after is not None:
        response.headers["Retry-After"] = str(fault.retry_after)
    for name, value in denial.headers.items():  # a denial's own Retry-After wins
        response.headers[name] = value
    return response


BACKEND_DOWN = Denial("auth_backend_unavailable")
"""The key store did not answer and the key is not cached: every entry point answers this."""
