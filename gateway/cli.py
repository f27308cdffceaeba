"""The ``gateway`` command (SPEC §10).

Usage errors exit 2 (argparse), refused input exits 1 with the reason on
stderr, ``--json`` prints one JSON document on stdout. A key's secret is
printed once, by ``keys create`` and ``keys rotate``, and never again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from . import __version__
from .config import Config, ConfigError, load_config, resolve_path
from .config.units import parse_per_period
from .keys.format import key_pattern
from .keys.model import KeyRecord
from .keys.service import (
    CLI,
    UNSHOWABLE,
    InvalidRequest,
    KeyService,
    OperationError,
    expires_in,
    rotation_due,
)
from .keys.store import KeyStore
from .store.connection import StoreHandle, StoreUnavailable, open_store
from .store.embedded import EmbeddedStoreError
from .telemetry.logs import configure_logging


class Refused(Exception):
    """Input the command cannot act on (exit status 1)."""


def _load(args: argparse.Namespace) -> Config:
    path = resolve_path(args.config)
    try:
        return load_config(path)
    except ConfigError as exc:
        raise Refused(
            "invalid configuration " + str(path) + ":\n  " + "\n  ".join(exc.errors)
        ) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


async def _with_service(config: Config, work: Callable[[KeyService], Awaitable[int]]) -> int:
    try:
        handle: StoreHandle = open_store(config.redis)
    except EmbeddedStoreError as exc:
        raise Refused(str(exc)) from None
    try:
        store = KeyStore(handle.client, config.redis.key_prefix)
        from .keys.audit import AuditLog

        service = KeyService(store, config, audit=AuditLog(handle.client, config.redis.key_prefix))
        return await work(service)
    except StoreUnavailable as exc:
        raise Refused(f"the key store at {handle.url} is unavailable: {exc}") from None
    finally:
        await handle.close()


def _credits_arg(text: str, option: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise Refused(f"{option} must be a whole number of credits from 0, not {text!r}")
    return int(text)


def _refill_arg(text: str) -> dict[str, Any]:
    try:
        amount, interval = parse_per_period(text, "--refill")
    except ValueError as exc:
        raise Refused(str(exc)) from None
    return {"amount": amount, "interval": interval}


def credits_text(credits: dict[str, Any] | None) -> str:
    """A key's credits on one line: ``940 left, refilled to 1000 each month``."""
    if credits is None:
        return "not metered"
    remaining = credits.get("remaining")
    text = "? left" if remaining is None else f"{remaining} left"
    refill = credits.get("refill")
    if refill:
        text += f", refilled to {refill['amount']} each {refill['interval']}"
    else:
        text += ", no refill"
    return text


def _credits_cell(credits: dict[str, Any] | None) -> str:
    """A key's credits in a table cell: ``-``, ``940``, ``940 (1000/month)``."""
    if credits is None:
        return "-"
    remaining = "?" if credits.get("remaining") is None else str(credits["remaining"])
    refill = credits.get("refill")
    return f"{remaining} ({refill['amount']}/{refill['interval']})" if refill else remaining


def printable(text: str) -> str:
    """``text`` for a terminal: control and direction characters escaped (a name stored
    before they were refused must not move the cursor, colour the screen or forge a row)."""
    return UNSHOWABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def _key_lines(
    record: KeyRecord,
    last_used: str | None,
    rotation_days: int,
    credits: dict[str, Any] | None = None,
) -> list[str]:
    status = record.status()
    if status == "active" and rotation_due(record, rotation_days):
        status += " (rotation due)"
    rows = [
        ("id", record.id),
        ("name", printable(record.name)),
        ("key", f"{record.prefix}…{record.last4}"),
        ("mode", record.mode),
        ("account", record.account_id),
        ("status", status),
        ("permissions", ", ".join(record.permissions) or "-"),
        ("created", record.created_at),
        ("expires", record.expires_at or "never"),
        ("revoked", record.revoked_at or "-"),
        ("last used", last_used or "never"),
        ("rate limit", _rate_limit_text(record.rate_limit)),
        ("credits", credits_text(credits)),
        ("allowed ips", ", ".join(record.allowed_ips) or "any"),
        ("allowed referrers", ", ".join(record.allowed_referrers) or "any"),
        ("allowed endpoints", ", ".join(record.allowed_endpoints) or "any"),
        ("metadata", json.dumps(record.metadata) if record.metadata else "-"),
    ]
    if record.rotated_from:
        rows.append(("rotated from", record.rotated_from))
    if record.rotated_to:
        rows.append(("rotated to", record.rotated_to))
    return [f"{name:<18} {value}" for name, value in rows]


# -- verbs --------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    path = resolve_path(args.path or args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"{path}: invalid configuration ({len(exc.errors)} error(s))", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    print(f"{path}: OK ({len(config.routes)} route(s), {len(config.plans)} plan(s))")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args)
    if config.logging.format != "text":
        configure_logging(config.logging.format)
    workers = args.workers or config.server.workers
    from .server import install_uvloop, serve

    if workers > 1:
        from .workers import supervise

        return supervise(config, str(resolve_path(args.config)), workers)
    install_uvloop()
    try:
        return asyncio.run(serve(config, config_path=str(resolve_path(args.config))))
    except EmbeddedStoreError as exc:
        raise Refused(str(exc)) from None
    except OSError as exc:
        raise Refused(f"cannot listen: {exc}") from None


def cmd_accounts_create(args: argparse.Namespace) -> int:
    config = _load(args)

    async def work(service: KeyService) -> int:
        account = await service.create_account(name=args.name, email=args.email, plan=args.plan)
        if args.json:
            _print_json(
                account.__dict__ if hasattr(account, "__dict__") else _account_dict(account)
            )
        else:
            print(f"created account {account.id} ({printable(account.name)}, plan {account.plan})")
        return 0

    return asyncio.run(_with_service(config, work))


def _account_dict(account: Any) -> dict[str, Any]:
    return {"id": account.id, "name": account.name, "email": account.email, "plan": account.plan,
            "created_at": account.created_at}  # fmt: skip


def cmd_accounts_list(args: argparse.Namespace) -> int:
    config = _load(args)

    async def work(service: KeyService) -> int:
        accounts = await service.store.list_accounts()
        if args.json:
            _print_json({"data": [_account_dict(a) for a in accounts]})
        else:
            for a in accounts:
                print(f"{a.id}  {a.plan:<10} {printable(a.name)}  {printable(a.email or '')}")
        return 0

    return asyncio.run(_with_service(config, work))


def cmd_keys_create(args: argparse.Namespace) -> int:
    config = _load(args)
    data: dict[str, Any] = {"name": args.name, "mode": args.mode}
    if args.permissions is not None:
        data["permissions"] = [p.strip() for p in args.permissions.split(",") if p.strip()]
    if args.expires_in and args.expires_at:
        raise Refused("give --expires-in or --expires-at, not both")
    if args.expires_in:
        data["expires_at"] = expires_in(args.expires_in)
    elif args.expires_at:
        data["expires_at"] = args.expires_at
    if args.allow_ip:
        data["allowed_ips"] = args.allow_ip
    if args.allow_referrer:
        data["allowed_referrers"] = args.allow_referrer
    if args.allow_endpoint:
        data["allowed_endpoints"] = args.allow_endpoint
    if args.rate_limit:
        data["rate_limit"] = _rate_limit_option(args.rate_limit)
    if args.metadata:
        try:
            data["metadata"] = json.loads(args.metadata)
        except json.JSONDecodeError as exc:
            raise Refused(f"--metadata is not JSON: {exc}") from None
    if args.refill is not None and args.credits is None:
        raise Refused("--refill needs --credits: the balance the key starts with")
    if args.credits is not None:
        data["credits"] = {
            "remaining": _credits_arg(args.credits, "--credits"),
            "refill": _refill_arg(args.refill) if args.refill is not None else None,
        }

    async def work(service: KeyService) -> int:
        record, secret = await service.create_key(CLI, args.account, data)
        (shown,) = await service.shown([record], after_change=True)
        if args.json:
            _print_json({**shown, "key": secret})
        else:
            print(
                f"created {record.mode} key {record.id} ({printable(record.name)}) for account {record.account_id}"
            )
            if shown["credits"] is not None:
                print(f"credits: {credits_text(shown['credits'])}")
            print()
            print(f"  {secret}")
            print()
            print("This is the only time the key is shown: store it somewhere safe now.")
        return 0

    return asyncio.run(_with_service(config, work))


def _rate_limit_option(given: list[str]) -> str | list[str]:
    """``--rate-limit`` as the API takes it: one rate, or a list when several windows are given."""
    rates = [part.strip() for value in given for part in value.split(",") if part.strip()]
    if not rates:
        raise Refused("--rate-limit needs a rate such as 100/minute")
    return rates[0] if len(rates) == 1 else rates


def _rate_limit_text(rate_limit: str | tuple[str, ...] | None) -> str:
    if rate_limit is None:
        return "plan default"
    return rate_limit if isinstance(rate_limit, str) else ", ".join(rate_limit)


CLEARABLE = {
    "expires_at": None,
    "rate_limit": None,
    "metadata": {},
    "allowed_ips": [],
    "allowed_referrers": [],
    "allowed_endpoints": [],
}


def cmd_keys_update(args: argparse.Namespace) -> int:
    """The API's PATCH: each option given replaces that field; --clear empties one."""
    config = _load(args)
    data: dict[str, Any] = {}
    for field in args.clear or ():
        data[field] = CLEARABLE[field]
    if args.name is not None:
        data["name"] = args.name
    if args.permissions is not None:
        data["permissions"] = [p.strip() for p in args.permissions.split(",") if p.strip()]
    if args.expires_in and args.expires_at:
        raise Refused("give --expires-in or --expires-at, not both")
    for given, field in (
        (args.expires_in or args.expires_at, "expires_at"),
        (args.allow_ip, "allowed_ips"),
        (args.allow_referrer, "allowed_referrers"),
        (args.allow_endpoint, "allowed_endpoints"),
        (args.rate_limit, "rate_limit"),
        (args.metadata, "metadata"),
    ):
        if given and field in data:
            raise Refused(f"--clear {field} and a new value for it at once: give one")
    if args.expires_in:
        data["expires_at"] = expires_in(args.expires_in)
    elif args.expires_at:
        data["expires_at"] = args.expires_at
    if args.allow_ip:
        data["allowed_ips"] = args.allow_ip
    if args.allow_referrer:
        data["allowed_referrers"] = args.allow_referrer
    if args.allow_endpoint:
        data["allowed_endpoints"] = args.allow_endpoint
    if args.rate_limit:
        data["rate_limit"] = _rate_limit_option(args.rate_limit)
    if args.metadata:
        try:
            data["metadata"] = json.loads(args.metadata)
        except json.JSONDecodeError as exc:
            raise Refused(f"--metadata is not JSON: {exc}") from None
    credits_options = [
        name
        for name, given in (
            ("--credits", args.credits is not None),
            ("--refill", args.refill is not None),
            ("--no-refill", args.no_refill),
            ("--no-credits", args.no_credits),
        )
        if given
    ]
    if args.no_credits and len(credits_options) > 1:
        other = next(name for name in credits_options if name != "--no-credits")
        raise Refused(f"--no-credits and {other} at once: give one")
    if args.refill is not None and args.no_refill:
        raise Refused("--refill and --no-refill at once: give one")
    if args.no_credits:
        data["credits"] = None
    elif credits_options:
        # what is not given is kept: --credits alone keeps the refill, --refill the balance
        change: dict[str, Any] = {}
        if args.credits is not None:
            change["remaining"] = _credits_arg(args.credits, "--credits")
        if args.refill is not None:
            change["refill"] = _refill_arg(args.refill)
        elif args.no_refill:
            change["refill"] = None
        data["credits"] = change
    if not data:
        raise Refused("nothing to change: give at least one option (see --help)")

    async def work(service: KeyService) -> int:
        record = await service.update_key(CLI, args.id, data)
        (shown,) = await service.shown([record], after_change=True)
        if args.json:
            _print_json(shown)
        else:
            print(f"updated {record.id}: {', '.join(sorted(data))}")
            print(
                "\n".join(
                    _key_lines(
                        record, shown["last_used_at"], config.keys.rotation_days, shown["credits"]
                    )
                )
            )
        return 0

    return asyncio.run(_with_service(config, work))


def cmd_accounts_update(args: argparse.Namespace) -> int:
    config = _load(args)

    async def work(service: KeyService) -> int:
        account = await service.update_account(
            args.id, name=args.name, email=args.email, plan=args.plan
        )
        if args.json:
            _print_json(_account_dict(account))
        else:
            print(f"updated account {account.id} ({printable(account.name)}, plan {account.plan})")
        return 0

    return asyncio.run(_with_service(config, work))


def cmd_keys_list(args: argparse.Namespace) -> int:
    config = _load(args)

    async def work(service: KeyService) -> int:
        if args.account:
            await service.account(args.account)
        records, _ = await service.list_keys(CLI, args.account, mode=args.mode, limit=100)
        if args.account:
            # Page through the whole account for the CLI.
            while len(records) % 100 == 0 and records:
                more, has_more = await service.list_keys(
                    CLI, args.account, mode=args.mode, limit=100, starting_after=records[-1].id
                )
                records.extend(more)
                if not has_more:
                    break
        shown = await service.shown(records)
        if args.json:
            _print_json({"data": shown})
            return 0
        if not records:
            print("no keys")
            return 0
        print(
            f"{'ID':<26} {'KEY':<18} {'MODE':<5} {'STATUS':<8} {'LAST USED':<21} "
            f"{'CREDITS':<16} NAME"
        )
        for r, key in zip(records, shown, strict=True):
            print(
                f"{r.id:<26} {r.prefix + '…' + r.last4:<18} {r.mode:<5} {r.status():<8} "
                f"{key['last_used_at'] or 'never':<21} {_credits_cell(key['credits']):<16} "
                f"{printable(r.name)}"
            )
        return 0

    return asyncio.run(_with_service(config, work))


def cmd_keys_show(args: argparse.Namespace) -> int:
    config = _load(args)

    async def work(service: KeyService) -> int:
        record = await service.get_key(CLI, args.id)
        (shown,) = await service.shown([record])
        used = shown["last_used_at"]
        usage = None
        usage_reader = getattr(service, "usage_days", None)
        if usage_reader is not None:
            usage = await usage_reader(record, days=7)
        if args.json:
            data = shown
            data["rotation_due"] = rotation_due(record, config.keys.rotation_days)
            if usage is not None:
                data["usage"] = usage
            _print_json(data)
            return 0
        print("\n".join(_key_lines(record, used, config.keys.rotation_days, shown["credits"])))
        if usage:
            print("\nrequests (UTC day: allowed / denied / rate-limited)")
            for day in usage:
                print(
                    f"  {day['date']}: {day['allowed']} / {day['denied']} / {day['rate_limited']}"
                )
        return 0

    return asyncio.run(_with_service(config, work))


def cmd_keys_usage(args: argparse.Namespace) -> int:
    """The API's usage view: daily counts by outcome, the plan's quota, the key's credits."""
    config = _load(args)
    if not 1 <= args.days <= 90:
        raise Refused(f"--days must be from 1 to 90, not {args.days}")

    async def work(service: KeyService) -> int:
        record = await service.get_key(CLI, args.id)
        days = await service.usage_days(record, days=args.days)
        budgets = await service.budgets(record)
        if args.json:
            _print_json({"key_id": record.id, "days": days, **budgets})
            return 0
        print(f"usage of {record.id} ({printable(record.name)}, {record.mode})")
        quota = budgets["quota"]
        if quota is None:
            print("quota:   none (the account's plan has no quota)")
        else:
            print(
                f"quota:   {quota['used']} of {quota['limit']} used this {quota['period']} "
                f"(the account's {record.mode} keys together), resets {quota['resets_at']}"
            )
        print(f"credits: {credits_text(budgets['credits'])}")
        print()
        print(f"{'DATE (UTC)':<12} {'ALLOWED':>9} {'DENIED':>9} {'RATE LIMITED':>13}")
        for day in days:
            print(
                f"{day['date']:<12} {day['allowed']:>9} {day['denied']:>9} "
                f"{day['rate_limited']:>13}"
            )
        return 0

    return asyncio.run(_with_service(config, work))


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    config = _load(args)

    async def work(service: KeyService) -> int:
        record = await service.revoke_key(CLI, args.id)
        if args.json:
            (shown,) = await service.shown([record], after_change=True)
            _print_json(
                {"id": record.id, "revoked_at": record.revoked_at, "credits": shown["credits"]}
            )
        else:
            print(f"revoked {record.id} at {record.revoked_at}")
        return 0

    return asyncio.run(_with_service(config, work))


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    config = _load(args)

    async def work(service: KeyService) -> int:
        new, secret, old = await service.rotate_key(CLI, args.id, args.grace)
        if args.json:
            _print_json(
                {
                    **(await service.shown([new], after_change=True))[0],
                    "key": secret,
                    "previous_key": {"id": old.id, "expires_at": old.expires_at},
                }
            )
        else:
            print(f"rotated {old.id} -> {new.id}; the old key stops working at {old.expires_at}")
            print()
            print(f"  {secret}")
            print()
            print("This is the only time the new key is shown: store it somewhere safe now.")
        return 0

    return asyncio.run(_with_service(config, work))


def cmd_audit(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.limit < 1:
        raise Refused("--limit must be at least 1")

    async def work(service: KeyService) -> int:
        if args.account:
            await service.account(args.account)  # an unknown account is refused, not empty
        events = await service.audit.read(account_id=args.account, limit=args.limit)
        if args.json:
            _print_json({"data": events})
            return 0
        if not events:
            print("no audit events")
            return 0
        for e in events:
            extra = {
                k: v
                for k, v in e.items()
                if k not in ("at", "actor", "action", "account_id", "key_id", "id")
            }
            line = (f"{e['at']}  {e['actor']:<26} {e['action']:<15} {e.get('key_id') or '-':<26} "
                    f"{e.get('account_id') or '-'} {json.dumps(extra) if extra else ''}")  # fmt: skip
            print(line.rstrip())
        return 0

    return asyncio.run(_with_service(config, work))


def cmd_events_list(args: argparse.Namespace) -> int:
    config = _load(args)
    if not 1 <= args.limit <= 100:
        raise Refused("--limit must be from 1 to 100")

    async def work(service: KeyService) -> int:
        await service.account(args.account)  # an unknown account is refused, not empty
        page = await service.events.list(
            args.account,
            test_only=args.mode == "test",
            limit=args.limit,
            starting_after=args.starting_after,
            type_filter=args.type,
        )
        if page is None:
            raise Refused(f"--starting-after {args.starting_after} is not an event of this list")
        events, has_more = page
        if args.json:
            _print_json({"data": [e.public() for e in events], "has_more": has_more})
            return 0
        if not events:
            print("no events")
            return 0
        for e in events:
            subject = e.data.get("key_id") or e.data.get("id") or "-"
            print(f"{e.created_at}  {e.id}  {e.mode:<4}  {e.type:<22} {subject}")
        if has_more:
            print(f"(more: --starting-after {events[-1].id})")
        return 0

    return asyncio.run(_with_service(config, work))


def cmd_keys_pattern(args: argparse.Namespace) -> int:
    config = _load(args)
    print(key_pattern(config.keys.prefix))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import run_demo

    return run_demo(args)


# -- parser -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a sub-command's own (absent) --config must not reset one given before the verb.
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="config file (default: $GATEWAY_CONFIG or config/gateway.yaml)",
    )
    parser = argparse.ArgumentParser(
        prog="gateway", description="API-key authentication gateway", parents=[common]
    )
    parser.add_argument(
        "--version", action="version", version=f"keygate {__version__}", help="print the version"
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("serve", parents=[common], help="run the gateway")
    p.add_argument("--workers", type=int, help="worker processes (default: server.workers)")
    p.set_defaults(func=cmd_serve)

    p = verbs.add_parser("check-config", parents=[common], help="validate a config file")
    p.add_argument("path", nargs="?", help="the file to check (default: --config)")
    p.set_defaults(func=cmd_check_config)

    p = verbs.add_parser(
        "demo", parents=[common], help="run the gateway before a demo upstream, with demo keys"
    )
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--upstream-port", type=int, default=8000)
    p.add_argument("--admin-port", type=int, default=9090)
    p.add_argument("--data-dir", default=".gateway-data/demo")
    p.set_defaults(func=cmd_demo)

    accounts = verbs.add_parser(
        "accounts", parents=[common], help="manage accounts"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = accounts.add_parser("create", parents=[common], help="create an account")
    p.add_argument("--name", required=True)
    p.add_argument("--email")
    p.add_argument("--plan", default="default")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_accounts_create)
    p = accounts.add_parser(
        "update", parents=[common], help="change an account's plan, name or email"
    )
    p.add_argument("id")
    p.add_argument("--plan", help="a plan the config defines; applies to every key at once")
    p.add_argument("--name")
    p.add_argument("--email")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_accounts_update)
    p = accounts.add_parser("list", parents=[common], help="list accounts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_accounts_list)

    keys = verbs.add_parser("keys", parents=[common], help="manage API keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = keys.add_parser(
        "create", parents=[common], help="create a key (its secret is printed once)"
    )
    p.add_argument("--account", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--mode", choices=["live", "test"], default="live")
    p.add_argument("--permissions", help="comma-separated, e.g. read,users:write")
    p.add_argument("--expires-in", help="e.g. 90d")
    p.add_argument("--expires-at", help="ISO 8601, e.g. 2027-01-01T00:00:00Z")
    p.add_argument("--allow-ip", action="append", metavar="CIDR")
    p.add_argument("--allow-referrer", action="append", metavar="PATTERN")
    p.add_argument("--allow-endpoint", action="append", metavar="PATTERN")
    p.add_argument(
        "--rate-limit",
        action="append",
        help="e.g. 100/minute; several windows comma-separated or repeated: 10/second,1000/hour",
    )
    p.add_argument("--metadata", help="a flat JSON object")
    p.add_argument("--credits", metavar="N", help="meter the key: the credits it starts with")
    p.add_argument("--refill", metavar="N/day|N/month", help="with --credits, e.g. 1000/month")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_create)
    p = keys.add_parser(
        "update", parents=[common], help="change a key (as PATCH /v1/api-keys/{id} does)"
    )
    p.add_argument("id")
    p.add_argument("--name")
    p.add_argument("--permissions", help="comma-separated, replaces the list ('' for none)")
    p.add_argument("--expires-in", help="e.g. 90d, from now")
    p.add_argument("--expires-at", help="ISO 8601, e.g. 2027-01-01T00:00:00Z")
    p.add_argument("--allow-ip", action="append", metavar="CIDR", help="replaces the list")
    p.add_argument("--allow-referrer", action="append", metavar="PATTERN")
    p.add_argument("--allow-endpoint", action="append", metavar="PATTERN")
    p.add_argument(
        "--rate-limit",
        action="append",
        help="e.g. 100/minute; several windows comma-separated or repeated: 10/second,1000/hour",
    )
    p.add_argument("--metadata", help="a flat JSON object, replaces the metadata")
    p.add_argument("--credits", metavar="N", help="set the balance (keeps the refill)")
    p.add_argument("--refill", metavar="N/day|N/month", help="set the refill (keeps the balance)")
    p.add_argument("--no-refill", action="store_true", help="stop refilling (keeps the balance)")
    p.add_argument("--no-credits", action="store_true", help="stop metering the key by credits")
    p.add_argument(
        "--clear", action="append", choices=sorted(CLEARABLE), metavar="FIELD",
        help=f"remove a field's value: {', '.join(sorted(CLEARABLE))}",
    )  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_update)
    p = keys.add_parser("list", parents=[common], help="list keys")
    p.add_argument("--account")
    p.add_argument("--mode", choices=["live", "test"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_list)
    p = keys.add_parser("show", parents=[common], help="show one key")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_show)
    p = keys.add_parser(
        "usage", parents=[common], help="a key's daily requests, its plan's quota and credits"
    )
    p.add_argument("id")
    p.add_argument("--days", type=int, default=30, help="how many UTC days (1 to 90)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_usage)

    p = keys.add_parser("revoke", parents=[common], help="revoke a key")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_revoke)
    p = keys.add_parser(
        "rotate", parents=[common], help="replace a key; the old one expires after --grace"
    )
    p.add_argument("id")
    p.add_argument("--grace", default="24h")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_keys_rotate)

    p = keys.add_parser(
        "pattern", parents=[common], help="the regular expression that finds this gateway's keys"
    )
    p.set_defaults(func=cmd_keys_pattern)

    events = verbs.add_parser(
        "events", parents=[common], help="key changes and alerts"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = events.add_parser("list", parents=[common], help="an account's events, newest first")
    p.add_argument("--account", required=True)
    p.add_argument("--type", help="an event type, or a prefix such as alert.")
    p.add_argument("--mode", choices=["live", "test"], help="test: test-mode events only")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--starting-after", metavar="EVENT_ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_events_list)

    p = verbs.add_parser("audit", parents=[common], help="show the audit trail")
    p.add_argument("--account")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("GATEWAY_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    try:
        return args.func(args)
    except Refused as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except InvalidRequest as exc:
        where = f" ({exc.field})" if exc.field else ""
        print(f"gateway: refused{where}: {exc.message}", file=sys.stderr)
        return 1
    except OperationError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`gateway keys list | head`): quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
