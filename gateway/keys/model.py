"""Key and account records as stored, and the compiled form the request path reads."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from ..checks.endpoint import EndpointRule, compile_allowed_endpoints
from ..checks.ip import Network, compile_allowed_ips
from ..checks.referrer import ReferrerRule, compile_allowed_referrers
from ..config.units import RateLimit, parse_rate_limit
from ..timefmt import parse_time, utcnow


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    email: str | None
    plan: str
    created_at: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Account:
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as the store keeps it: the hash of its secret, never the secret."""

    id: str
    account_id: str
    name: str
    mode: str
    hash: str
    prefix: str  # e.g. "sk_live_"
    last4: str
    permissions: tuple[str, ...] = ()
    created_at: str = ""
    expires_at: str | None = None
    revoked_at: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    rate_limit: str | tuple[str, ...] | None = None  # one rate, or several windows as given
    allowed_ips: tuple[str, ...] = ()
    allowed_referrers: tuple[str, ...] = ()
    allowed_endpoints: tuple[str, ...] = ()
    rotated_from: str | None = None
    rotated_to: str | None = None
    # metered by credits (SPEC §16): {"id": balance id, "refill": {"amount", "interval"} | None};
    # the balance itself lives in the metering store, shared with the key's rotations
    credits: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> KeyRecord:
        data = json.loads(text)
        for name in ("permissions", "allowed_ips", "allowed_referrers", "allowed_endpoints"):
            data[name] = tuple(data.get(name) or ())
        if isinstance(data.get("rate_limit"), list):
            data["rate_limit"] = tuple(data["rate_limit"])
        return cls(**data)

    def evolve(self, **changes: Any) -> KeyRecord:
        return replace(self, **changes)

    @property
    def credits_id(self) -> str | None:
        """The balance this key spends, or None when it is not metered by credits."""
        return self.credits["id"] if self.credits else None

    def public(
        self, last_used_at: str | None = None, credits: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The key as the API and CLI show it: no secret, no hash.

        ``credits`` is the balance as read from the metering store; without it a metered
        key shows its refill and no ``remaining``.
        """
        if credits is None and self.credits:
            credits = {"remaining": None, "refill": self.credits.get("refill")}
        return {
            "id": self.id,
            "object": "api_key",
            "name": self.name,
            "mode": self.mode,
            "account_id": self.account_id,
            "prefix": self.prefix,
            "last4": self.last4,
            "permissions": list(self.permissions),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "last_used_at": last_used_at,
            "metadata": dict(self.metadata),
            "rate_limit": (
                list(self.rate_limit) if isinstance(self.rate_limit, tuple) else self.rate_limit
            ),
            "allowed_ips": list(self.allowed_ips),
            "allowed_referrers": list(self.allowed_referrers),
            "allowed_endpoints": list(self.allowed_endpoints),
            "rotated_from": self.rotated_from,
            "rotated_to": self.rotated_to,
            "credits": credits,
        }

    def status(self, now: datetime | None = None) -> str:
        now = now or utcnow()
        if self.revoked_at:
            return "revoked"
        expires = parse_time(self.expires_at)
        if expires is not None and expires <= now:
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class CompiledKey:
    """What the request path needs of a key, parsed once when the cache is filled."""

    record: KeyRecord
    plan: str
    revoked: bool
    expires_at: float | None  # epoch seconds
    permissions: tuple[str, ...]
    allowed_ips: tuple[Network, ...]
    allowed_referrers: tuple[ReferrerRule, ...]
    allowed_endpoints: tuple[EndpointRule, ...]
    rate_limit: RateLimit | None
    upstream_headers: tuple[tuple[str, str], ...]
    upstream_head: bytes = b""  # the same as header lines, for the upstream request head
    credits_id: str | None = None  # the balance the key spends; None: not metered by credits

    @property
    def id(self) -> str:
        return self.record.id

    @classmethod
    def build(cls, record: KeyRecord, plan: str) -> CompiledKey:
        expires = parse_time(record.expires_at)
        headers = [
            ("X-Gateway-Key-Id", record.id),
            ("X-Gateway-Key-Name", _header_safe(record.name)),
            ("X-Gateway-Key-Mode", record.mode),
            ("X-Gateway-Account-Id", record.account_id),
            ("X-Gateway-Permissions", ",".join(record.permissions)),
        ]
        if record.metadata:
            # ensure_ascii keeps the header value plain ASCII whatever the metadata holds.
            headers.append(
                ("X-Gateway-Key-Metadata", json.dumps(record.metadata, separators=(",", ":")))
            )
        return cls(
            record=record,
            plan=plan,
            revoked=record.revoked_at is not None,
            expires_at=expires.timestamp() if expires else None,
            permissions=tuple(record.permissions),
            allowed_ips=compile_allowed_ips(record.allowed_ips),
            allowed_referrers=compile_allowed_referrers(record.allowed_referrers),
            allowed_endpoints=compile_allowed_endpoints(record.allowed_endpoints),
            rate_limit=parse_rate_limit(record.rate_limit) if record.rate_limit else None,
            upstream_headers=tuple(headers),
            upstream_head="".join(f"{name}: {value}\r\n" for name, value in headers).encode(),
            credits_id=record.credits_id,
        )


def _header_safe(text: str) -> str:
    """A header value: non-ASCII and control characters percent-encoded."""
    if text.isascii() and text.isprintable():
        return text
    from urllib.parse import quote

    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[]^_`{|}~")
