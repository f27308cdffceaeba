"""The key and account operations, shared by the CLI and the management API.

Each operation validates its input here, once; callers only translate
:class:`InvalidRequest`, :class:`NotFound` and :class:`Forbidden` into their
own way of answering (an exit code, an HTTP status).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from ..checks.endpoint import compile_endpoint
from ..checks.ip import compile_allowed_ips
from ..checks.referrer import compile_referrer
from ..config.schema import Config
from ..config.units import MAX_WINDOWS, parse_duration, parse_rate, parse_rate_limit
from ..events.log import EventLog
from ..events.webhooks import WebhookStore
from ..metering import MeterStore, Refill
from ..permissions import validate_permission
from ..store.connection import StoreUnavailable
from ..timefmt import isoformat, parse_time, utcnow
from ..usage.reader import UsageReader
from .format import generate_secret, hash_secret, new_id
from .model import Account, KeyRecord
from .patterns import (
    ALLOWED_ENDPOINT,
    ALLOWED_IP,
    ALLOWED_REFERRER,
    EXPIRES_IN,
    GRACE_PERIOD,
    KEY_ID,
    RATE,
    full,
)
from .store import AccountBusy, KeyStore

log = logging.getLogger("gateway.keys")

KEY_FIELDS = (
    "name",
    "mode",
    "permissions",
    "metadata",
    "allowed_ips",
    "allowed_referrers",
    "allowed_endpoints",
    "rate_limit",
    "expires_at",
    "expires_in",  # a duration from now, instead of expires_at
    "credits",  # {"remaining": N, "refill": {"amount": N, "interval": "day"|"month"} | null}
)
PATCH_FIELDS = tuple(f for f in KEY_FIELDS if f != "mode")
METADATA_MAX_KEYS = 50
METADATA_MAX_KEY_LENGTH = 40
METADATA_MAX_VALUE_LENGTH = 500
LIST_MAX = 100
CREDITS_MAX = 10**15  # far beyond any plan, well inside the store's exact integers


class OperationError(Exception):
    code = "invalid_request"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRequest(OperationError):
    """The input is refused; ``field`` names what is wrong."""


_RATE_PATTERN = full(RATE)
_API_PATTERNS = {"grace_period": full(GRACE_PERIOD), "expires_in": full(EXPIRES_IN)}
_KEY_ID = full(KEY_ID)
_LIST_PATTERNS = {
    "allowed_ips": full(ALLOWED_IP),
    "allowed_referrers": full(ALLOWED_REFERRER),
    "allowed_endpoints": full(ALLOWED_ENDPOINT),
}


def api_duration(value: Any, field: str) -> float:
    """Seconds in an API duration; InvalidRequest naming ``field`` for anything else."""
    if not isinstance(value, str) or _API_PATTERNS[field].fullmatch(value) is None:
        raise InvalidRequest(
            f"{field} must be a duration such as 30s, 5m, 24h or 90d (a whole part of at "
            f"most six digits{', from 1' if field == 'expires_in' else ''}), not {value!r}",
            field,
        )
    return parse_duration(value)


class NotFound(OperationError):
    code = "resource_not_found"


class Forbidden(OperationError):
    code = "insufficient_permissions"


class LastAdminKey(OperationError):
    """The change would leave the account with no active admin key to manage it (409)."""

    code = "last_admin_key"


class NotActive(OperationError):
    """The key's state (revoked, expired) does not allow the change asked for."""

    code = "key_not_active"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performs an operation: a key (through the API) or the operator's CLI."""

    id: str  # key id or "cli"
    account_id: str | None = None
    mode: str | None = None  # a test-mode key may touch only test keys
    request_id: str | None = None  # the API request that acted, for the audit trail
    # held to "an account keeps an active admin key": not the operator (who lets a locked
    # out account back in), nor a leak report (a leaked key is revoked, whatever it is)
    keeps_an_admin: bool = True

    @property
    def test_only(self) -> bool:
        return self.mode == "test"


CLI = Actor("cli", keeps_an_admin=False)


# -- validation -------------------------------------------------------------


_SHAPES = {
    "allowed_ips": "an IPv4 or IPv6 address or CIDR (10.0.0.0/8, 2001:db8::/32)",
    "allowed_referrers": "https://host/path*, host or *.host",
    "allowed_endpoints": '"/path/glob" or "METHOD /path/glob"',
}


def _string_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{field} must be a list of strings", field)
    shape = _LIST_PATTERNS.get(field)
    if shape is not None:
        for v in value:
            if shape.fullmatch(v) is None:
                raise InvalidRequest(f"{v!r} is not {_SHAPES[field]}", field)
    return value


# Control characters, and the bidirectional controls that reorder what a terminal or page
# shows: a name holding them could forge lines in an operator's `keys list`.
UNSHOWABLE_CHARS = "\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"  # a regex class's inside
UNSHOWABLE = re.compile(f"[{UNSHOWABLE_CHARS}]")


def valid_name(name: object) -> str:
    """A key's or account's name, stripped; raises :class:`InvalidRequest` naming ``name``."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidRequest("name must be a non-empty string of at most 200 characters", "name")
    if UNSHOWABLE.search(name):
        raise InvalidRequest("name must not hold control or direction characters", "name")
    return name.strip()


def validate_key_fields(data: dict[str, Any], *, allowed: tuple[str, ...]) -> dict[str, Any]:
    """Check and normalise key fields; raises InvalidRequest naming the field."""
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}", unknown[0])
    out: dict[str, Any] = {}
    if "name" in data:
        out["name"] = valid_name(data["name"])
    if "mode" in data:
        if data["mode"] not in ("live", "test"):
            raise InvalidRequest("mode must be 'live' or 'test'", "mode")
        out["mode"] = data["mode"]
    if "permissions" in data:
        perms = _string_list(data["permissions"], "permissions")
        for p in perms:
            try:
                validate_permission(p)
            except ValueError as exc:
                raise InvalidRequest(str(exc), "permissions") from None
        out["permissions"] = tuple(dict.fromkeys(perms))
    if "metadata" in data:
        out["metadata"] = _metadata(data["metadata"])
    if "allowed_ips" in data:
        ips = _string_list(data["allowed_ips"], "allowed_ips")
        try:
            compile_allowed_ips(ips)
        except ValueError as exc:
            raise InvalidRequest(str(exc), "allowed_ips") from None
        out["allowed_ips"] = tuple(i.strip() for i in ips)
    for field, compile_one in (
        ("allowed_referrers", compile_referrer),
        ("allowed_endpoints", compile_endpoint),
    ):
        if field in data:
            values = _string_list(data[field], field)
            for v in values:
                try:
                    compile_one(v)
                except ValueError as exc:
                    raise InvalidRequest(str(exc), field) from None
            out[field] = tuple(v.strip() for v in values)
    if "rate_limit" in data:
        out["rate_limit"] = _rate_limit(data["rate_limit"])
    if "credits" in data:
        out["credits"] = _credits(data["credits"])
    if "expires_at" in data and "expires_in" in data:
        raise InvalidRequest("give expires_at or expires_in, not both", "expires_in")
    if "expires_at" in data:
        out["expires_at"] = _expires_at(data["expires_at"])
    if "expires_in" in data:
        out["expires_at"] = expires_in(data["expires_in"])
    return out


def _count(value: Any, field: str, low: int) -> int:
    # JSON has one number type: 5000.0 is the whole number the schema's "integer" allows.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= CREDITS_MAX:
        raise InvalidRequest(
            f"{field} must be a whole number from {low} to {CREDITS_MAX}, not {value!r}", field
        )
    return value


def _rate_limit(value: Any) -> str | tuple[str, ...] | None:
    """One rate, or a list of 1 to 5 rates with distinct windows, kept in the order given."""
    if value is None:
        return None
    if isinstance(value, list):
        if not 1 <= len(value) <= MAX_WINDOWS:
            raise InvalidRequest(
                f"rate_limit as a list has 1 to {MAX_WINDOWS} rates, not {len(value)}",
                "rate_limit",
            )
        rates = tuple(_one_rate(item) for item in value)
        try:
            parse_rate_limit(list(rates))
        except ValueError as exc:
            raise InvalidRequest(f"rate_limit: {exc}", "rate_limit") from None
        return rates
    return _one_rate(value)


def _one_rate(value: Any) -> str:
    if not isinstance(value, str) or _RATE_PATTERN.fullmatch(value) is None:
        raise InvalidRequest(
            f"rate_limit must be N/second, N/minute, N/hour or N/day with N from 1 "
            f"(no spaces), or a list of such rates, not {value!r}",
            "rate_limit",
        )
    return str(parse_rate(value))


def _credits(value: Any) -> dict[str, Any] | None:
    """``{"remaining": int | None, "refill": Refill | None}``, or None (not metered).

    ``remaining`` left out (None) keeps the balance; ``refill`` left out is absent from
    the answer and keeps the refill, while ``"refill": null`` removes it."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(
            'credits must be an object such as {"remaining": 1000, "refill": '
            '{"amount": 1000, "interval": "month"}} or null',
            "credits",
        )
    unknown = [k for k in value if k not in ("remaining", "refill")]
    if unknown:
        raise InvalidRequest(f"credits: unknown field {unknown[0]!r}", "credits")
    remaining = value.get("remaining")
    if remaining is not None:
        remaining = _count(remaining, "credits.remaining", 0)
    if "refill" not in value:
        return {"remaining": remaining}
    refill = value["refill"]
    if refill is not None:
        if not isinstance(refill, dict) or set(refill) != {"amount", "interval"}:
            raise InvalidRequest(
                'credits.refill must be {"amount": N, "interval": "day" | "month"} or null',
                "credits",
            )
        if refill["interval"] not in ("day", "month"):
            raise InvalidRequest(
                f"credits.refill.interval must be 'day' or 'month', not {refill['interval']!r}",
                "credits",
            )
        refill = Refill(_count(refill["amount"], "credits.refill.amount", 1), refill["interval"])
    return {"remaining": remaining, "refill": refill}


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("metadata must be a flat JSON object", "metadata")
    if len(value) > METADATA_MAX_KEYS:
        raise InvalidRequest(f"metadata holds at most {METADATA_MAX_KEYS} keys", "metadata")
    for k, v in value.items():
        if not k or len(k) > METADATA_MAX_KEY_LENGTH:
            raise InvalidRequest(
                f"metadata keys are 1 to {METADATA_MAX_KEY_LENGTH} characters", "metadata"
            )
        if isinstance(v, dict | list):
            raise InvalidRequest(
                f"metadata.{k}: metadata is flat (strings, numbers, booleans, null)", "metadata"
            )
        if isinstance(v, float) and not math.isfinite(v):
            raise InvalidRequest(f"metadata.{k}: numbers must be finite", "metadata")
        if isinstance(v, str) and len(v) > METADATA_MAX_VALUE_LENGTH:
            raise InvalidRequest(
                f"metadata.{k}: values are at most {METADATA_MAX_VALUE_LENGTH} characters",
                "metadata",
            )
    return dict(value)


def _expires_at(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest("expires_at must be an ISO 8601 date-time or null", "expires_at")
    try:
        moment = parse_time(value)
    except (ValueError, OverflowError):
        raise InvalidRequest(f"{value!r} is not an ISO 8601 date-time", "expires_at") from None
    assert moment is not None
    if moment <= utcnow():
        raise InvalidRequest("expires_at must be in the future", "expires_at")
    return isoformat(moment)


def expires_in(duration: str) -> str:
    """An ``expires_at`` value ``duration`` from now (for ``--expires-in``)."""
    seconds = api_duration(duration, "expires_in")
    if seconds <= 0:
        raise InvalidRequest("expires_in must be positive", "expires_in")
    try:
        return isoformat(utcnow() + timedelta(seconds=seconds)) or ""
    except OverflowError:
        raise InvalidRequest("expires_in is too long", "expires_in") from None


# -- operations ---------------------------------------------------------------


class KeyService:
    def __init__(
        self,
        store: KeyStore,
        config: Config,
        audit: Any | None = None,
        events: EventLog | None = None,
    ):
        self.store = store
        self.config = config
        self.audit = audit
        if events is None:
            events = EventLog(
                store.client, store.prefix, fan_out=WebhookStore(store.client, store.prefix)
            )
        self.events = events
        self.balances = MeterStore(store.client, store.prefix)

    async def _event(self, type: str, record: KeyRecord, **extra: Any) -> None:
        """Raise the key change's event (SPEC §14); like the audit trail, a store failure
        here is logged rather than failing a change already made."""
        try:
            await self.events.emit(
                type,
                account_id=record.account_id,
                mode=record.mode,
                data={**await self.event_view(record), **extra},
            )
        except StoreUnavailable as exc:
            log.error("event %s on %s not recorded: %s", type, record.id, exc)

    async def event_view(self, record: KeyRecord) -> dict[str, Any]:
        """The key as an event carries it (SPEC §14): as listed, with its live credits;
        with the store unreachable, its refill and an unknown (null) remaining."""
        try:
            credits = (await self.credits_of([record])).get(record.id)
        except StoreUnavailable:
            credits = None
        return record.public(None, credits)

    async def _record(
        self, actor: Actor, action: str, account_id: str, key_id: str | None, **extra: Any
    ) -> None:
        if self.audit is None:
            return
        if actor.request_id is not None:
            extra["request_id"] = actor.request_id
        try:
            await self.audit.record(
                actor=actor.id, action=action, account_id=account_id, key_id=key_id, **extra
            )
        except StoreUnavailable as exc:
            # The change is already made: failing the call now would hide that (and lose
            # a new key's only showing of its secret). The loss is logged instead.
            log.error("audit event %s on %s by %s not recorded: %s", action, key_id, actor.id, exc)

    # accounts

    async def create_account(
        self, *, name: str, email: str | None = None, plan: str = "default"
    ) -> Account:
        name = valid_name(name)
        if plan not in self.config.plans:
            known = ", ".join(sorted(self.config.plans))
            raise InvalidRequest(
                f"plan {plan!r} is not defined in the config (known: {known})", "plan"
            )
        if email is not None and ("@" not in email or len(email) > 320):
            raise InvalidRequest(f"{email!r} is not an email address", "email")
        account = Account(
            id=new_id("acct"),
            name=name.strip(),
            email=email,
            plan=plan,
            created_at=isoformat(utcnow()) or "",
        )
        await self.store.add_account(account)
        await self._record(CLI, "account.create", account.id, None, plan=plan)
        return account

    async def update_account(
        self,
        account_id: str,
        *,
        name: str | None = None,
        email: str | None = None,
        plan: str | None = None,
    ) -> Account:
        """Change an account's name, email or plan; every replica applies a new plan to the
        account's keys within two seconds (their cached copies are dropped)."""
        account = await self.account(account_id)
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = valid_name(name)
        if email is not None:
            if "@" not in email or len(email) > 320:
                raise InvalidRequest(f"{email!r} is not an email address", "email")
            changes["email"] = email
        if plan is not None:
            if plan not in self.config.plans:
                known = ", ".join(sorted(self.config.plans))
                raise InvalidRequest(
                    f"plan {plan!r} is not defined in the config (known: {known})", "plan"
                )
            changes["plan"] = plan
        if not changes:
            raise InvalidRequest("nothing to change: give a name, email or plan")
        updated = replace(account, **changes)
        await self.store.add_account(updated)
        if updated.plan != account.plan:
            ids, _ = await self.store.list_key_ids(
                account_id, mode=None, limit=10**9, starting_after=None
            )
            await self.store.publish_invalidation(r.hash for r in await self.store.get_keys(ids))
        await self._record(CLI, "account.update", account_id, None, fields=sorted(changes))
        return updated

    async def account(self, account_id: str) -> Account:
        account = await self.store.get_account(account_id)
        if account is None:
            raise NotFound(f"no account {account_id!r}", "account_id")
        return account

    # keys

    async def create_key(
        self, actor: Actor, account_id: str, data: dict[str, Any]
    ) -> tuple[KeyRecord, str]:
        fields = validate_key_fields(data, allowed=KEY_FIELDS)
        if "name" not in fields:
            raise InvalidRequest("name is required", "name")
        mode = fields.pop("mode", "test" if actor.test_only else "live")
        if actor.test_only and mode != "test":
            raise Forbidden("a test-mode key can create only test keys", "mode")
        await self.account(account_id)
        credits = fields.pop("credits", None)
        if credits is not None and credits["remaining"] is None:
            raise InvalidRequest("credits.remaining is required", "credits")
        secret = generate_secret(self.config.keys.prefix, mode)
        record = KeyRecord(
            id=new_id("key"),
            account_id=account_id,
            mode=mode,
            hash=hash_secret(secret),
            prefix=f"{self.config.keys.prefix}_{mode}_",
            last4=secret[-4:],
            created_at=isoformat(utcnow()) or "",
            **fields,
        )
        if credits is not None:
            # the balance first: a key that says it is metered is never seen without one
            record = await self._set_credits(record, credits)
        await self.store.add_key(record)
        await self._record(actor, "key.create", account_id, record.id, name=record.name, mode=mode)
        await self._event("api_key.created", record)
        return record, secret

    async def get_key(self, actor: Actor, key_id: str) -> KeyRecord:
        record = await self.store.get_key(key_id) if isinstance(key_id, str) else None
        if record is None or (
            actor.account_id is not None and record.account_id != actor.account_id
        ):
            raise NotFound(f"no API key {key_id!r}", "id")
        if actor.test_only and record.mode != "test":
            raise Forbidden("a test-mode key can see and manage only test keys", "id")
        return record

    async def list_keys(
        self,
        actor: Actor,
        account_id: str | None,
        *,
        mode: str | None = None,
        limit: int = 10,
        starting_after: str | None = None,
    ) -> tuple[list[KeyRecord], bool]:
        if mode not in (None, "live", "test"):
            raise InvalidRequest("mode must be 'live' or 'test'", "mode")
        if not isinstance(limit, int) or not 1 <= limit <= LIST_MAX:
            raise InvalidRequest(f"limit must be between 1 and {LIST_MAX}", "limit")
        if actor.test_only:
            if mode == "live":
                raise Forbidden("a test-mode key can see only test keys", "mode")
            mode = "test"
        if account_id is None:
            accounts = [a.id for a in await self.store.list_accounts()]
            records: list[KeyRecord] = []
            for acct in accounts:
                page = await self.store.list_key_ids(
                    acct, mode=mode, limit=10**9, starting_after=None
                )
                records.extend(await self.store.get_keys(page[0] if page else []))
            records.sort(key=lambda r: r.created_at, reverse=True)
            return records, False
        if starting_after is not None:
            if _KEY_ID.fullmatch(starting_after) is None:
                raise InvalidRequest(
                    f"starting_after must be a key id (key_…), not {starting_after!r}",
                    "starting_after",
                )
            try:
                await self.get_key(actor, starting_after)
            except (NotFound, Forbidden):  # an unknown key id answers 404 (SPEC §7)
                raise NotFound(
                    f"starting_after: no API key {starting_after!r} in this list",
                    "starting_after",
                ) from None
        page = await self.store.list_key_ids(
            account_id, mode=mode, limit=limit, starting_after=starting_after
        )
        if page is None:  # a key of the account, but not of this list (the other mode's)
            raise NotFound(
                f"starting_after: no API key {starting_after!r} in this list", "starting_after"
            )
        ids, more = page
        return await self.store.get_keys(ids), more

    async def update_key(self, actor: Actor, key_id: str, data: dict[str, Any]) -> KeyRecord:
        fields = validate_key_fields(data, allowed=PATCH_FIELDS)
        record = await self.get_key(actor, key_id)
        if record.revoked_at:
            raise NotActive("a revoked key cannot be changed", "id")
        credits = fields.pop("credits", ...)
        updated = record.evolve(**fields)
        if credits is None:
            updated = updated.evolve(credits=None)
        elif credits is not ...:
            updated = await self._set_credits(updated, credits)
        await self._save_keeping_an_admin(actor, record, updated, "remove the admin permission of")
        if credits is None and record.credits_id is not None:
            await self._drop_credits(record)
        changed = sorted([*fields, "credits"] if credits is not ... else fields)
        await self._record(actor, "key.update", record.account_id, record.id, fields=changed)
        await self._event("api_key.updated", updated)
        return updated

    async def revoke_key(self, actor: Actor, key_id: str) -> KeyRecord:
        record = await self.get_key(actor, key_id)
        if record.revoked_at:
            # Perhaps revoked by a call answered 503 whose write landed all the same: say
            # it again, so every replica drops its copy now.
            await self.store.publish_invalidation([record.hash])
            return record
        revoked = record.evolve(revoked_at=isoformat(utcnow()))
        await self._save_keeping_an_admin(actor, record, revoked, "revoke")
        await self._record(actor, "key.revoke", record.account_id, record.id)
        await self._event("api_key.revoked", revoked)
        return revoked

    async def _save_keeping_an_admin(
        self, actor: Actor, before: KeyRecord, after: KeyRecord, doing: str
    ) -> None:
        """Save ``after``, unless (through the API) it leaves the account no active admin key.

        A change that takes an admin key away runs under the account's lock, so that two
        admin keys revoking each other at once cannot both succeed.
        """
        if not actor.keeps_an_admin or not _active_admin(before) or _active_admin(after):
            await self.store.save_key(after)
            return
        try:
            async with self.store.account_lock(before.account_id):
                await self._keep_an_admin(actor, before, after, doing)
                await self.store.save_key(after)
        except AccountBusy as exc:
            raise LastAdminKey(f"{exc}; try again", "id") from None

    async def _keep_an_admin(
        self, actor: Actor, before: KeyRecord, after: KeyRecord, doing: str
    ) -> None:
        """Refuse (through the API) a change that leaves the account no active admin key.

        A key is an active admin key while it is neither revoked nor expired and holds
        ``admin``. Live admin keys manage both modes, test ones only test keys: a live key
        needs another active live admin key to remain, a test key any other active admin
        key. The operator's CLI is not held to it: it is how an account locked out is let
        back in.
        """
        if not actor.keeps_an_admin or not _active_admin(before) or _active_admin(after):
            return
        ids, _ = await self.store.list_key_ids(
            before.account_id, mode=None, limit=10**9, starting_after=None
        )
        others = [
            other
            for other in await self.store.get_keys([i for i in ids if i != before.id])
            if _active_admin(other) and (before.mode == "test" or other.mode == "live")
        ]
        if not others:
            itself = " (the key making this request)" if actor.id == before.id else ""
            raise LastAdminKey(
                f"Cannot {doing} key {before.id}{itself}: it is the account's last active "
                f"{'' if before.mode == 'test' else 'live '}admin key, and without one no "
                "key could manage this account's keys; create another admin key first",
                "id",
            )

    async def rotate_key(
        self, actor: Actor, key_id: str, grace_period: Any = "24h"
    ) -> tuple[KeyRecord, str, KeyRecord]:
        """A new key with the old one's settings; the old one expires after ``grace_period``."""
        if grace_period is None:
            grace_period = "24h"
        grace = api_duration(grace_period, "grace_period")
        old = await self.get_key(actor, key_id)
        try:
            now = utcnow()
            old_expiry = now + timedelta(seconds=grace)
        except OverflowError:
            raise InvalidRequest("grace_period is too long", "grace_period") from None
        if old.status() != "active":
            raise NotActive(f"key {key_id} is {old.status()} and cannot be rotated", "id")
        secret = generate_secret(self.config.keys.prefix, old.mode)
        new = KeyRecord(
            id=new_id("key"),
            account_id=old.account_id,
            name=old.name,
            mode=old.mode,
            hash=hash_secret(secret),
            prefix=old.prefix,
            last4=secret[-4:],
            permissions=old.permissions,
            created_at=isoformat(now) or "",
            expires_at=old.expires_at,
            metadata=dict(old.metadata),
            rate_limit=old.rate_limit,
            allowed_ips=old.allowed_ips,
            allowed_referrers=old.allowed_referrers,
            allowed_endpoints=old.allowed_endpoints,
            rotated_from=old.id,
            credits=old.credits,  # the new key spends the same balance as the old one
        )
        current = parse_time(old.expires_at)
        if current is not None and current < old_expiry:
            old_expiry = current
        retired = old.evolve(expires_at=isoformat(old_expiry), rotated_to=new.id)
        await self.store.add_key(new)
        await self.store.save_key(retired)
        await self._record(
            actor,
            "key.rotate",
            old.account_id,
            old.id,
            new_key_id=new.id,
            grace_period=grace_period,
        )
        await self._event(
            "api_key.rotated",
            new,
            previous_key={"id": retired.id, "expires_at": retired.expires_at},
        )
        return new, secret, retired

    async def _set_credits(self, record: KeyRecord, credits: dict[str, Any]) -> KeyRecord:
        """Set the key's balance (a top-up, a new refill); ``record`` as it now reads.

        Without ``remaining`` the balance is kept and only the refill changes, in one
        store script, so requests spending meanwhile are never lost or undone."""
        remaining = credits["remaining"]
        # A key metered afresh after a rotation gets a balance of its own: its id may still
        # name the balance the key rotated from it spends (which it shared until unmetered).
        fresh = record.credits_id is None and record.rotated_to is not None
        balance_id = record.credits_id or (new_id("bal") if fresh else record.id)
        if "refill" in credits:
            refill: Refill | None = credits["refill"]
        else:  # left out: the balance keeps the refill it has (shared through a rotation)
            kept = (record.credits or {}).get("refill")
            refill = Refill(int(kept["amount"]), kept["interval"]) if kept else None
            if record.credits_id is not None:
                _, (balance,) = await self.balances.read(
                    record.account_id, record.mode, None, [record.credits_id]
                )
                if balance is not None:
                    refill = balance.refill
        if remaining is None and record.credits_id is None:
            raise InvalidRequest(
                "credits.remaining is required: the key has no credits yet", "credits"
            )
        await self.balances.set_credits(
            record.account_id, record.mode, balance_id, remaining, refill
        )
        return record.evolve(
            credits={"id": balance_id, "refill": refill.public() if refill else None}
        )

    async def _drop_credits(self, record: KeyRecord) -> None:
        """The key is no longer metered; its balance goes unless a rotation still shares it."""
        assert record.credits_id is not None
        ids, _ = await self.store.list_key_ids(
            record.account_id, mode=record.mode, limit=10**9, starting_after=None
        )
        if any(
            other.credits_id == record.credits_id
            for other in await self.store.get_keys(i for i in ids if i != record.id)
        ):
            return
        await self.balances.drop_credits(record.account_id, record.mode, record.credits_id)

    async def credits_of(self, records: list[KeyRecord]) -> dict[str, dict[str, Any]]:
        """Each metered key's ``credits`` as the API shows it: remaining (refills due
        applied) and refill; keys sharing one balance through a rotation show the same."""
        groups: dict[tuple[str, str], list[KeyRecord]] = {}
        for record in records:
            if record.credits_id is not None:
                groups.setdefault((record.account_id, record.mode), []).append(record)
        out: dict[str, dict[str, Any]] = {}
        for (account_id, mode), members in groups.items():
            _, balances = await self.balances.read(
                account_id, mode, None, [r.credits_id or r.id for r in members]
            )
            for record, balance in zip(members, balances, strict=True):
                # the balance's refill: one for the keys a rotation made share it
                refill = (
                    (balance.refill.public() if balance.refill else None)
                    if balance is not None
                    else (record.credits or {}).get("refill")
                )
                out[record.id] = {
                    "remaining": balance.remaining if balance is not None else 0,
                    "refill": refill,
                }
        return out

    async def shown(
        self, records: list[KeyRecord], *, after_change: bool = False
    ) -> list[dict[str, Any]]:
        """The keys as the API and CLI show them: last use and live credits, read for
        all of them at once (one balance read per account and mode).

        ``after_change``: the answer to a change already made (and, for create and
        rotate, the only showing of a secret) must not fail for a read; with the store
        unreachable the keys show no last use and a null ``remaining``."""
        try:
            used = await self.store.last_used(r.id for r in records)
            credits = await self.credits_of(records)
        except StoreUnavailable:
            if not after_change:
                raise
            return [r.public() for r in records]
        return [r.public(used.get(r.id), credits.get(r.id)) for r in records]

    async def budgets(self, record: KeyRecord) -> dict[str, Any]:
        """``{"quota", "credits"}`` for the key's usage view, in one store read: the
        account plan's quota in the key's mode (limit, used, period, resets_at) or None,
        and the key's credits as key reads show them or None."""
        account = await self.store.get_account(record.account_id)
        quota = self.config.plan(account.plan).quota if account is not None else None
        ids = [record.credits_id] if record.credits_id is not None else []
        if quota is None and not ids:
            return {"quota": None, "credits": None}
        use, balances = await self.balances.read(record.account_id, record.mode, quota, ids)
        shown_quota = None
        if use is not None:
            shown_quota = {
                "limit": use.limit,
                "used": use.used,
                "period": use.unit,
                "resets_at": isoformat(next_period_start(use.unit)),
            }
        shown_credits = None
        if ids:
            balance = balances[0]
            shown_credits = {
                "remaining": balance.remaining if balance is not None else 0,
                "refill": (record.credits or {}).get("refill"),
            }
        return {"quota": shown_quota, "credits": shown_credits}

    async def usage_days(self, record: KeyRecord, days: int = 30) -> list[dict[str, Any]]:
        """The key's daily request counts by outcome, newest UTC day first."""
        return await UsageReader(self.store.client, self.store.prefix).days(record, days)


def next_period_start(unit: str, now: datetime | None = None) -> datetime:
    """When the calendar ``unit`` ("day" or "month", UTC) holding ``now`` ends."""
    now = now or utcnow()
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return day + timedelta(days=1)
    if day.month == 12:
        return day.replace(year=day.year + 1, month=1, day=1)
    return day.replace(month=day.month + 1, day=1)


def _active_admin(record: KeyRecord) -> bool:
    return "admin" in record.permissions and record.status() == "active"


def rotation_due(record: KeyRecord, rotation_days: int, now: datetime | None = None) -> bool:
    created = parse_time(record.created_at)
    if created is None:
        return False
    return ((now or utcnow()) - created) > timedelta(days=rotation_days)
