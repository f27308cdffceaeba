"""The OpenAPI 3.1 document of the management endpoints, served at ``{prefix}/openapi.json``.

Written out by hand, as a reader would want it; ``tests/test_management_openapi.py``
keeps it true: every endpoint in :data:`~gateway.management.api.ENDPOINTS` must be
documented (and nothing else), the document must validate as OpenAPI 3.1, and
real answers must match the schemas given here.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..config.units import MAX_WINDOWS, WINDOWS
from ..events.log import EVENT_TYPES
from ..keys import patterns
from ..keys.patterns import anchored
from ..keys.service import (
    CREDITS_MAX,
    LIST_MAX,
    METADATA_MAX_KEY_LENGTH,
    METADATA_MAX_KEYS,
    METADATA_MAX_VALUE_LENGTH,
    UNSHOWABLE_CHARS,
)
from ..permissions import PERMISSION

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema["type"]
    return {**schema, "type": [kind, "null"]}


TIMESTAMP = {"type": "string", "format": "date-time", "examples": ["2026-11-22T10:30:00Z"]}
KEY_ID = {"type": "string", "pattern": anchored(patterns.KEY_ID), "examples": ["key_4f8a2c"]}
WEBHOOK_ID = {"type": "string", "pattern": "^we_[A-Za-z0-9_-]+$"}
EVENT_ID = {"type": "string", "pattern": "^evt_[A-Za-z0-9]+$"}
ACCOUNT_ID = {"type": "string", "pattern": "^acct_[A-Za-z0-9_-]+$"}
MODE = {"type": "string", "enum": ["live", "test"]}
STRINGS = {"type": "array", "items": {"type": "string"}}
RATE = {"type": "string", "pattern": anchored(patterns.RATE), "examples": ["100/minute"]}
RATES = {
    "type": "array",
    "items": RATE,
    "minItems": 1,
    "maxItems": MAX_WINDOWS,
    # at most one rate per window length
    "allOf": [
        {"contains": {"pattern": f"/{unit}$"}, "minContains": 0, "maxContains": 1}
        for unit in WINDOWS
    ],
    "examples": [["10/second", "1000/hour"]],
}
RATE_LIMIT_NULLABLE = {
    "oneOf": [RATE, RATES, {"type": "null"}],
    "description": "One rate, or a list of rates with distinct windows (every window applies; "
    "a request refused by one spends nothing from the others). Answered as given.",
}
GRACE = {
    "type": "string",
    "pattern": anchored(patterns.GRACE_PERIOD),
    "examples": ["2s", "24h", "0s"],
}
EXPIRY = {"type": "string", "pattern": anchored(patterns.EXPIRES_IN), "examples": ["90d", "12h"]}
METADATA = {
    "type": "object",
    "description": "A flat object of the owner's own: string, number, boolean or null values.",
    "maxProperties": METADATA_MAX_KEYS,
    "propertyNames": {"minLength": 1, "maxLength": METADATA_MAX_KEY_LENGTH},
    "additionalProperties": {
        "anyOf": [
            {"type": "string", "maxLength": METADATA_MAX_VALUE_LENGTH},
            {"type": ["number", "boolean", "null"]},
        ]
    },
}
PERMISSIONS = {"type": "array", "items": {"type": "string", "pattern": anchored(PERMISSION)}}


def _list_of(pattern: str, examples: list[str]) -> dict[str, Any]:
    return {
        "type": ["array", "null"],
        "items": {"type": "string", "pattern": anchored(pattern), "examples": examples},
    }


REFILL = {
    "type": ["object", "null"],
    "properties": {
        "amount": {"type": "integer", "minimum": 1, "maximum": CREDITS_MAX},
        "interval": {"enum": ["day", "month"]},
    },
    "required": ["amount", "interval"],
    "additionalProperties": False,
    "description": "remaining is set to amount at 00:00 UTC each day or on the 1st of each "
    "month. null: no refill.",
}
CREDITS_SHOWN = {
    "type": ["object", "null"],
    "properties": {
        "remaining": {"type": ["integer", "null"], "minimum": 0},
        "refill": REFILL,
    },
    "required": ["remaining", "refill"],
    "description": "The key's credit balance (refills due applied); null: not metered by credits.",
}


QUOTA_SHOWN = {
    "type": ["object", "null"],
    "properties": {
        "limit": {"type": "integer", "minimum": 1},
        "used": {"type": "integer", "minimum": 0},
        "period": {"enum": ["day", "month"]},
        "resets_at": TIMESTAMP,
    },
    "required": ["limit", "used", "period", "resets_at"],
    "additionalProperties": False,
    "description": "The account plan's quota in the key's mode, shared by all of the "
    "account's keys of that mode: calls used in the current UTC day or month, and when it "
    "resets. null: the plan has no quota.",
}


def _key_properties() -> dict[str, Any]:
    return {
        "id": KEY_ID,
        "object": {"const": "api_key"},
        "name": {"type": "string"},
        "mode": MODE,
        "account_id": ACCOUNT_ID,
        "prefix": {"type": "string", "examples": ["sk_live_"]},
        "last4": {"type": "string", "minLength": 4, "maxLength": 4},
        "permissions": STRINGS,
        "created_at": TIMESTAMP,
        "expires_at": _nullable(TIMESTAMP),
        "revoked_at": _nullable(TIMESTAMP),
        "last_used_at": _nullable(TIMESTAMP),
        "metadata": METADATA,
        "rate_limit": RATE_LIMIT_NULLABLE,
        "allowed_ips": STRINGS,
        "allowed_referrers": STRINGS,
        "allowed_endpoints": STRINGS,
        "rotated_from": _nullable(KEY_ID),
        "rotated_to": _nullable(KEY_ID),
        "credits": CREDITS_SHOWN,
    }


def _key_fields(*, create: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": {
            "type": "string",
            "minLength": 1,
            "maxLength": 200,
            # at least one character that is not a space: the name is stored stripped
            "pattern": f"^[^{UNSHOWABLE_CHARS}]*[^\\s{UNSHOWABLE_CHARS}][^{UNSHOWABLE_CHARS}]*$",
            "description": "Not only spaces; no control or direction characters.",
        },
        "mode": {**MODE, "description": "Defaults to the calling key's mode."},
        "permissions": {
            **_nullable(PERMISSIONS),
            "description": "read, write, admin, webhook, or resource:action "
            "(users:read, users:write, users:*). null: none.",
        },
        "metadata": _nullable(METADATA),
        "allowed_ips": {
            **_list_of(patterns.ALLOWED_IP, ["203.0.113.0/24", "2001:db8::1"]),
            "description": "IPv4/IPv6 addresses or CIDRs. null or []: no restriction.",
        },
        "allowed_referrers": {
            **_list_of(patterns.ALLOWED_REFERRER, ["https://app.example.com/*", "*.example.com"]),
            "description": "https://app.example.com/*, app.example.com or *.example.com. "
            "null or []: no restriction.",
        },
        "allowed_endpoints": {
            **_list_of(patterns.ALLOWED_ENDPOINT, ["GET /v1/users/*", "/v1/reports/**"]),
            "description": '"/path/glob" or "METHOD /path/glob"; * is one segment, ** several. '
            "null or []: no restriction.",
        },
        "rate_limit": {
            **RATE_LIMIT_NULLABLE,
            "description": "Replaces the plan's limit for this key: one rate (100/minute) or a "
            "list of rates with distinct windows ([10/second, 1000/hour]), every window "
            "applying. null: the plan's.",
        },
        "expires_at": {
            **_nullable(TIMESTAMP),
            "examples": ["2099-01-01T00:00:00Z"],
            "description": "After now (else 400); null: never expires.",
        },
        "expires_in": {**EXPIRY, "description": "Instead of expires_at: a duration from now."},
        "credits": {
            "type": ["object", "null"],
            "properties": {
                "remaining": {"type": "integer", "minimum": 0, "maximum": CREDITS_MAX},
                "refill": REFILL,
            },
            "additionalProperties": False,
            **({"required": ["remaining"]} if create else {}),
            "description": "Each allowed request spends its route's cost. On update, remaining "
            "sets the balance (a top-up) and may be left out to keep it, but not on a key that "
            "has no credits yet (else 400); refill left out keeps the refill, refill null "
            "removes it; credits null: no credits.",
        },
    }
    if not create:
        del fields["mode"]
    return fields


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


ERRORS = {
    "400": _error_response(
        "invalid_request: details.field names what is wrong; or a path the gateway refuses "
        "before anything else (an encoded slash, NUL or backslash, a dot-segment escaping "
        "the root: SPEC §6)"
    ),
    "401": _error_response(
        "missing_api_key, invalid_authorization_header, invalid_api_key, revoked_api_key "
        "or expired_api_key"
    ),
    "403": _error_response(
        "insufficient_permissions (admin needed, or a test-mode key asking for a live key), "
        "ip_not_allowed, referrer_not_allowed or endpoint_not_allowed"
    ),
    "404": _error_response("resource_not_found: no such key in the caller's account"),
    "409": _error_response(
        "last_admin_key: the change (revoking the key, or taking away its admin permission) "
        "would leave the account without an active admin key; create another one first. "
        "key_not_active: the key is revoked (or, to rotate, expired)"
    ),
    "413": _error_response("payload_too_large"),
    "429": _error_response("rate_limit_exceeded (with Retry-After)"),
    "503": _error_response("auth_backend_unavailable (with Retry-After)"),
}


def _answer(status: str, description: str, schema: str) -> dict[str, Any]:
    return {status: {"description": description, "content": {JSON: {"schema": _ref(schema)}}}}


def _errors(*codes: str) -> dict[str, Any]:
    """The error answers of an operation: ``codes`` and 400, which any path may get."""
    return {code: ERRORS[code] for code in sorted({"400", *codes})}


def _body(schema: str, required: bool) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": _ref(schema)}}}


ID_PARAMETER = {"$ref": "#/components/parameters/KeyId"}
WEBHOOK_PARAMETER = {"$ref": "#/components/parameters/WebhookEndpointId"}
AUTH_ERRORS = ("401", "403", "429", "503")


def openapi_document(prefix: str) -> dict[str, Any]:
    """The document, with paths under ``prefix`` (``management.path_prefix``)."""
    key = f"{prefix}/api-keys/{{id}}"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "keygate management API",
            "version": __version__,
            "description": (
                "Verify a key, read its account, and manage the account's API keys. "
                "Every call except this document authenticates with "
                "`Authorization: Bearer <key>`, and the key's restrictions and rate "
                "limits apply as on any route. /api-keys needs the admin permission; "
                "a test-mode key sees and manages only test keys. A key's secret is "
                "returned once, in the `key` field of the answer to create or rotate."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": {
            f"{prefix}/auth/verify": {
                "get": {
                    "operationId": "verifyKey",
                    "summary": "Check the calling key and describe it",
                    "responses": {
                        **_answer("200", "The key is valid", "Verification"),
                        **_errors(*AUTH_ERRORS),
                    },
                }
            },
            f"{prefix}/account": {
                "get": {
                    "operationId": "getAccount",
                    "summary": "The calling key's account",
                    "responses": {
                        **_answer("200", "The account", "AccountAnswer"),
                        **_errors(*AUTH_ERRORS, "404"),
                    },
                }
            },
            f"{prefix}/api-keys": {
                "get": {
                    "operationId": "listKeys",
                    "summary": "The account's keys, newest first",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": LIST_MAX,
                                "default": 10,
                            },
                        },
                        {
                            "name": "starting_after",
                            "in": "query",
                            "description": "A key id from the previous page: the page after it.",
                            "schema": KEY_ID,
                        },
                        {"name": "mode", "in": "query", "schema": MODE},
                    ],
                    "responses": {
                        **_answer("200", "A page of keys", "KeyList"),
                        **_errors("400", *AUTH_ERRORS),
                        "404": _error_response(
                            "resource_not_found: starting_after names no key of this list"
                        ),
                    },
                },
                "post": {
                    "operationId": "createKey",
                    "summary": "Create a key in the caller's account",
                    "requestBody": _body("KeyCreate", True),
                    "responses": {
                        **_answer("201", "The new key, with its secret shown once", "NewKeyAnswer"),
                        **_errors("400", *AUTH_ERRORS, "413"),
                    },
                },
            },
            key: {
                "parameters": [ID_PARAMETER],
                "get": {
                    "operationId": "getKey",
                    "summary": "One key",
                    "responses": {
                        **_answer("200", "The key", "KeyAnswer"),
                        **_errors(*AUTH_ERRORS, "404"),
                    },
                },
                "patch": {
                    "operationId": "updateKey",
                    "summary": "Change a key's name, permissions, restrictions, limit or metadata",
                    "requestBody": _body("KeyUpdate", True),
                    "responses": {
                        **_answer("200", "The changed key", "KeyAnswer"),
                        **_errors("400", *AUTH_ERRORS, "404", "409", "413"),
                    },
                },
                "delete": {
                    "operationId": "revokeKey",
                    "summary": "Revoke a key, at once, on every gateway sharing the store",
                    "description": "The key is revoked, not deleted: it stays readable (GET "
                    "shows its revoked_at, the list keeps it) and so does its usage; revoking "
                    "it again answers the same. It cannot be changed or rotated any more.",
                    "responses": {
                        **_answer("200", "The key is revoked", "RevokedAnswer"),
                        **_errors(*AUTH_ERRORS, "404", "409"),
                    },
                },
            },
            f"{key}/rotate": {
                "parameters": [ID_PARAMETER],
                "post": {
                    "operationId": "rotateKey",
                    "summary": "Replace a key; the old one keeps working for the grace period",
                    "requestBody": _body("Rotate", False),
                    "responses": {
                        **_answer(
                            "201",
                            "The new key, with its secret shown once, and when the old one expires",
                            "RotatedAnswer",
                        ),
                        **_errors("400", *AUTH_ERRORS, "404", "409", "413"),
                    },
                },
            },
            f"{key}/usage": {
                "parameters": [ID_PARAMETER],
                "get": {
                    "operationId": "getKeyUsage",
                    "summary": "Requests per UTC day for the last 30 days, newest first, "
                    "with the plan's quota and the key's credits",
                    "responses": {
                        **_answer("200", "Daily counts by outcome", "UsageAnswer"),
                        **_errors(*AUTH_ERRORS, "404"),
                    },
                },
            },
            f"{prefix}/audit": {
                "get": {
                    "operationId": "listAuditEvents",
                    "summary": "Who created, changed, revoked or rotated the account's keys",
                    "description": "Newest first. A test-mode key sees events about test keys only.",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 500,
                                "default": 100,
                            },
                        }
                    ],
                    "responses": {
                        **_answer("200", "Audit events", "AuditList"),
                        **_errors("400", *AUTH_ERRORS),
                    },
                }
            },
            f"{prefix}/events": {
                "get": {
                    "operationId": "listEvents",
                    "summary": "The account's events (key changes and alerts), newest first",
                    "description": "Needs admin or webhook. Kept 30 days. A test-mode key sees "
                    "test-mode events only, a live key both.",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": LIST_MAX,
                                "default": 10,
                            },
                        },
                        {
                            "name": "starting_after",
                            "in": "query",
                            "description": "An event id from the previous page.",
                            "schema": EVENT_ID,
                        },
                        {
                            "name": "type",
                            "in": "query",
                            "description": "An exact type, or a prefix: alert. (or alert.*) "
                            "for every alert.",
                            "schema": {
                                "type": "string",
                                "pattern": r"^(\*|[a-z_]+(\.[a-z_]+)*(\.\*?)?)$",
                                "examples": ["api_key.revoked", "alert."],
                            },
                        },
                    ],
                    "responses": {
                        **_answer("200", "A page of events", "EventList"),
                        **_errors("400", *AUTH_ERRORS, "404"),
                    },
                }
            },
            f"{prefix}/webhook-endpoints": {
                "get": {
                    "operationId": "listWebhookEndpoints",
                    "summary": "The account's webhook endpoints (webhook or admin)",
                    "responses": {
                        **_answer("200", "The endpoints, newest first", "WebhookEndpointList"),
                        **_errors("400", *AUTH_ERRORS),
                    },
                },
                "post": {
                    "operationId": "createWebhookEndpoint",
                    "summary": "Send the events of the calling key's mode to a URL",
                    "description": "The URL must be https:// on a public address unless "
                    "webhooks.allow_private_targets is set. The answer holds the signing "
                    "secret, shown this once.",
                    "requestBody": _body("WebhookEndpointCreate", True),
                    "responses": {
                        **_answer(
                            "201", "The endpoint, with its secret shown once", "NewWebhookAnswer"
                        ),
                        **_errors("400", *AUTH_ERRORS, "413"),
                    },
                },
            },
            f"{prefix}/webhook-endpoints/{{id}}": {
                "parameters": [WEBHOOK_PARAMETER],
                "get": {
                    "operationId": "getWebhookEndpoint",
                    "summary": "One endpoint (never its secret)",
                    "responses": {
                        **_answer("200", "The endpoint", "WebhookEndpointAnswer"),
                        **_errors(*AUTH_ERRORS, "404"),
                    },
                },
                "patch": {
                    "operationId": "updateWebhookEndpoint",
                    "summary": "Change an endpoint's url, events, description or disabled",
                    "requestBody": _body("WebhookEndpointUpdate", True),
                    "responses": {
                        **_answer("200", "The changed endpoint", "WebhookEndpointAnswer"),
                        **_errors("400", *AUTH_ERRORS, "404", "413"),
                    },
                },
                "delete": {
                    "operationId": "deleteWebhookEndpoint",
                    "summary": "Delete an endpoint and its pending deliveries",
                    "responses": {
                        **_answer("200", "Deleted", "WebhookDeletedAnswer"),
                        **_errors(*AUTH_ERRORS, "404"),
                    },
                },
            },
            f"{prefix}/webhook-endpoints/{{id}}/test": {
                "parameters": [WEBHOOK_PARAMETER],
                "post": {
                    "operationId": "testWebhookEndpoint",
                    "summary": "Send a webhook.test event to this endpoint, whatever its events",
                    "responses": {
                        **_answer("202", "Queued", "WebhookTestAnswer"),
                        **_errors(*AUTH_ERRORS, "404"),
                    },
                },
            },
            f"{prefix}/webhook-endpoints/{{id}}/deliveries": {
                "parameters": [WEBHOOK_PARAMETER],
                "get": {
                    "operationId": "listWebhookDeliveries",
                    "summary": "One entry per event sent to this endpoint, newest first",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": LIST_MAX,
                                "default": 10,
                            },
                        },
                        {"name": "starting_after", "in": "query", "schema": EVENT_ID},
                    ],
                    "responses": {
                        **_answer("200", "A page of deliveries", "WebhookDeliveryList"),
                        **_errors("400", *AUTH_ERRORS, "404"),
                    },
                },
            },
            f"{prefix}/openapi.json": {
                "get": {
                    "operationId": "getOpenAPI",
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document",
                            "content": {JSON: {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key: sk_live_… or sk_test_…",
                }
            },
            "parameters": {
                "KeyId": {"name": "id", "in": "path", "required": True, "schema": KEY_ID},
                "WebhookEndpointId": {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": WEBHOOK_ID,
                },
            },
            "schemas": _schemas(),
        },
    }


EVENT_PATTERNS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "string",
        "pattern": r"^(\*|[a-z_]+(\.[a-z_]+)*(\.\*)?)$",
        "examples": ["*", "alert.*", "api_key.revoked"],
    },
}


def _webhook_properties() -> dict[str, Any]:
    return {
        "id": WEBHOOK_ID,
        "object": {"const": "webhook_endpoint"},
        "url": {"type": "string"},
        "events": EVENT_PATTERNS,
        "description": {"type": "string"},
        "disabled": {"type": "boolean"},
        "mode": MODE,
        "account_id": ACCOUNT_ID,
        "created_at": TIMESTAMP,
    }


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def _schemas() -> dict[str, Any]:
    meta = _object(
        {
            "request_id": {"type": "string"},
            "warnings": {
                "type": "array",
                "items": {"type": "string"},
                "description": "What in the request works otherwise than it may seem "
                "(e.g. a referrer pattern with a path, which cross-origin requests never match)",
            },
        },
        required=["request_id"],
    )
    key = _object(_key_properties())
    new_key = _object({**_key_properties(), "key": {"type": "string", "description": "The secret"}})
    rotated = _object(
        {
            **_key_properties(),
            "key": {"type": "string", "description": "The new key's secret"},
            "previous_key": _object({"id": KEY_ID, "expires_at": _nullable(TIMESTAMP)}),
        }
    )
    return {
        "Meta": meta,
        "Error": _object(
            {
                "error": _object(
                    {
                        "type": {
                            "type": "string",
                            "enum": [
                                "authentication_error",
                                "permission_error",
                                "rate_limit_error",
                                "invalid_request_error",
                                "api_error",
                            ],
                        },
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {"type": "object"},
                    }
                ),
                "meta": _ref("Meta"),
            }
        ),
        "ApiKey": key,
        "NewApiKey": new_key,
        "RotatedApiKey": rotated,
        "KeyCreate": {
            **_object(_key_fields(create=True), required=["name"]),
            "not": {"required": ["expires_at", "expires_in"]},
        },
        "KeyUpdate": {
            **_object(_key_fields(create=False), required=[]),
            "not": {"required": ["expires_at", "expires_in"]},
        },
        "Rotate": _object({"grace_period": {**_nullable(GRACE), "default": "24h"}}, required=[]),
        "Verification": _object(
            {
                "valid": {"const": True},
                "key_id": KEY_ID,
                "name": {"type": "string"},
                "mode": MODE,
                "account_id": ACCOUNT_ID,
                "permissions": STRINGS,
                "created_at": TIMESTAMP,
                "expires_at": _nullable(TIMESTAMP),
                "last_used_at": _nullable(TIMESTAMP),
                "rotation_due": {
                    "type": "boolean",
                    "description": "The key is older than keys.rotation_days.",
                },
                "credits": CREDITS_SHOWN,
            }
        ),
        "AccountAnswer": _object(
            {
                "data": _object(
                    {
                        "account_id": ACCOUNT_ID,
                        "name": {"type": "string"},
                        "email": {"type": ["string", "null"]},
                        "plan": {"type": "string"},
                        "api_version": {"const": "v1"},
                    }
                ),
                "meta": _object({"request_id": {"type": "string"}, "timestamp": TIMESTAMP}),
            }
        ),
        "KeyList": _object(
            {
                "data": {"type": "array", "items": _ref("ApiKey")},
                "has_more": {"type": "boolean"},
                "meta": _object(
                    {
                        "request_id": {"type": "string"},
                        "limit": {"type": "integer"},
                        "has_more": {"type": "boolean"},
                        "next_starting_after": {
                            **_nullable(KEY_ID),
                            "description": "Pass as starting_after for the next page.",
                        },
                    }
                ),
            }
        ),
        "KeyAnswer": _object({"data": _ref("ApiKey"), "meta": _ref("Meta")}),
        "NewKeyAnswer": _object({"data": _ref("NewApiKey"), "meta": _ref("Meta")}),
        "RotatedAnswer": _object({"data": _ref("RotatedApiKey"), "meta": _ref("Meta")}),
        "RevokedAnswer": _object(
            {
                "data": _object({"id": KEY_ID, "revoked_at": TIMESTAMP, "credits": CREDITS_SHOWN}),
                "message": {"const": "API key revoked successfully"},
                "meta": _ref("Meta"),
            }
        ),
        "AuditList": _object(
            {
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "description": "Action-specific fields (fields, new_key_id, "
                        "grace_period, request_id, …) follow the common ones.",
                        "properties": {
                            "id": {"type": "string"},
                            "at": TIMESTAMP,
                            "actor": {
                                "type": "string",
                                "description": "The acting key's id, or cli for the operator",
                            },
                            "action": {
                                "type": "string",
                                "examples": ["key.create", "key.update", "key.revoke"],
                            },
                            "account_id": {"type": ["string", "null"]},
                            "key_id": {"type": ["string", "null"]},
                        },
                        "required": ["id", "at", "actor", "action", "account_id", "key_id"],
                    },
                },
                "meta": _object({"request_id": {"type": "string"}, "limit": {"type": "integer"}}),
            }
        ),
        "Event": _object(
            {
                "id": EVENT_ID,
                "object": {"const": "event"},
                "type": {"type": "string", "enum": list(EVENT_TYPES)},
                "created_at": TIMESTAMP,
                "account_id": ACCOUNT_ID,
                "mode": MODE,
                "data": {
                    "type": "object",
                    "description": "api_key.*: the key as listed; alert.*: key_id and what "
                    "was seen (SPEC §14)",
                },
            }
        ),
        "EventList": _object(
            {
                "data": {"type": "array", "items": _ref("Event")},
                "has_more": {"type": "boolean"},
                "meta": _object(
                    {
                        "request_id": {"type": "string"},
                        "limit": {"type": "integer"},
                        "has_more": {"type": "boolean"},
                        "next_starting_after": _nullable(EVENT_ID),
                    }
                ),
            }
        ),
        "WebhookEndpoint": _object(_webhook_properties()),
        "NewWebhookEndpoint": _object(
            {
                **_webhook_properties(),
                "secret": {
                    "type": "string",
                    "pattern": "^whsec_",
                    "description": "The signing secret (Standard Webhooks), shown this once",
                },
            }
        ),
        "WebhookEndpointCreate": _object(
            {
                "url": {"type": "string", "format": "uri"},
                "events": {
                    **EVENT_PATTERNS,
                    "type": ["array", "null"],
                    "default": ["*"],
                    "description": "null or absent: every event (*)",
                },
                "description": {"type": ["string", "null"], "maxLength": 500},
            },
            required=["url"],
        ),
        "WebhookEndpointUpdate": _object(
            {
                "url": {"type": "string", "format": "uri"},
                "events": {
                    **EVENT_PATTERNS,
                    "type": ["array", "null"],
                    "description": "null: every event (*)",
                },
                "description": {"type": ["string", "null"], "maxLength": 500},
                "disabled": {"type": "boolean"},
            },
            required=[],
        ),
        "WebhookEndpointAnswer": _object({"data": _ref("WebhookEndpoint"), "meta": _ref("Meta")}),
        "NewWebhookAnswer": _object({"data": _ref("NewWebhookEndpoint"), "meta": _ref("Meta")}),
        "WebhookEndpointList": _object(
            {"data": {"type": "array", "items": _ref("WebhookEndpoint")}, "meta": _ref("Meta")}
        ),
        "WebhookDeletedAnswer": _object(
            {
                "data": _object({"id": WEBHOOK_ID, "deleted": {"const": True}}),
                "message": {"type": "string"},
                "meta": _ref("Meta"),
            }
        ),
        "WebhookTestAnswer": _object(
            {
                "data": _object(
                    {
                        "event_id": EVENT_ID,
                        "endpoint_id": WEBHOOK_ID,
                        "status": {"const": "pending"},
                    }
                ),
                "meta": _ref("Meta"),
            }
        ),
        "WebhookDelivery": _object(
            {
                "object": {"const": "webhook_delivery"},
                "event_id": EVENT_ID,
                "event_type": {"type": "string"},
                "endpoint_id": WEBHOOK_ID,
                "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
                "attempts": {"type": "integer", "minimum": 0},
                "last_status_code": {"type": ["integer", "null"]},
                "last_error": {"type": ["string", "null"]},
                "next_attempt_at": _nullable(TIMESTAMP),
                "created_at": TIMESTAMP,
            }
        ),
        "WebhookDeliveryList": _object(
            {
                "data": {"type": "array", "items": _ref("WebhookDelivery")},
                "has_more": {"type": "boolean"},
                "meta": _object(
                    {
                        "request_id": {"type": "string"},
                        "limit": {"type": "integer"},
                        "has_more": {"type": "boolean"},
                        "next_starting_after": _nullable(EVENT_ID),
                    }
                ),
            }
        ),
        "UsageAnswer": _object(
            {
                "data": _object(
                    {
                        "key_id": KEY_ID,
                        "days": {
                            "type": "array",
                            "minItems": 30,
                            "maxItems": 30,
                            "items": _object(
                                {
                                    "date": {"type": "string", "format": "date"},
                                    "allowed": {"type": "integer", "minimum": 0},
                                    "denied": {
                                        "type": "integer",
                                        "minimum": 0,
                                        "description": "Refused after the key was identified "
                                        "(403s)",
                                    },
                                    "rate_limited": {"type": "integer", "minimum": 0},
                                }
                            ),
                        },
                        "quota": QUOTA_SHOWN,
                        "credits": CREDITS_SHOWN,
                    }
                ),
                "meta": _ref("Meta"),
            }
        ),
    }
