"""Key format and checksum (SPEC §1), hashing of the secret, ids."""

from __future__ import annotations

import hashlib
import re

import pytest
from conftest import new_account, new_key, service_for

from gateway.config import parse_config
from gateway.keys.format import (
    BASE62,
    base62,
    checksum,
    generate_secret,
    hash_secret,
    new_id,
    parse_mode,
)

# Worked by hand (CRC-32/ISO-HDLC, the zlib one; base62 digits 0-9A-Za-z):
#
#   "123456789" is the standard CRC-32 check input: 0xCBF43926 = 3421780262
#   3421780262 = 3*62^5 + 45*62^4 + 35*62^3 + 27*62^2 + 22*62 + 14
#              -> digits 3, j(45), Z(35), R(27), M(22), E(14) = "3jZRME"
#
#   "sk_live_" + "0"*29 + "342" has CRC32 281609 (0x00044C09)
#   281609 = 1*62^3 + 11*62^2 + 16*62 + 5 -> "1BG5", left-padded to "001BG5"
#
#   "sk_live_abcdefghijklmnopqrstuvwxyz012345" has CRC32 0x4A9F83E4 = 1251967972
#   1251967972 = 1*62^5 + 22*62^4 + 45*62^3 + 8*62^2 + 3*62 + 50 -> "1Mj83o"
CHECK_VECTOR = ("123456789", "3jZRME")
PADDED_BODY = "0" * 29 + "342"
PADDED_KEY = "sk_live_" + PADDED_BODY + "001BG5"
LETTERS_KEY = "sk_live_abcdefghijklmnopqrstuvwxyz012345" + "1Mj83o"
KEY_SHAPE = re.compile(r"^sk_(live|test)_[0-9A-Za-z]{38}$")


class TestChecksum:
    def test_standard_crc32_check_value_in_base62(self):
        text, expected = CHECK_VECTOR
        assert checksum(text) == expected

    def test_short_checksum_is_left_padded_with_zeros(self):
        assert checksum("sk_live_" + PADDED_BODY) == "001BG5"

    def test_hand_computed_key_is_accepted(self):
        assert parse_mode(LETTERS_KEY, "sk") == "live"
        assert parse_mode(PADDED_KEY, "sk") == "live"

    def test_base62_digit_order_is_digits_upper_lower(self):
        assert BASE62 == "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
        assert base62(0, 6) == "000000"
        assert base62(61, 1) == "z"
        assert base62(62, 2) == "10"
        assert base62(2**32 - 1, 6) == "4gfFC3"  # 4*62^5 + 42*62^4 + 41*62^3 + 15*62^2 + 12*62 + 3


class TestGeneratedSecrets:
    @pytest.mark.parametrize("mode", ["live", "test"])
    def test_shape_and_checksum(self, mode):
        secret = generate_secret("sk", mode)
        assert KEY_SHAPE.match(secret)
        assert secret.startswith(f"sk_{mode}_")
        assert secret[-6:] == checksum(secret[:-6])
        assert parse_mode(secret, "sk") == mode

    def test_configured_prefix(self):
        secret = generate_secret("acme", "test")
        assert secret.startswith("acme_test_") and len(secret) == len("acme_test_") + 38
        assert parse_mode(secret, "acme") == "test"
        assert parse_mode(secret, "sk") is None

    def test_secrets_are_random(self):
        assert len({generate_secret("sk", "live") for _ in range(200)}) == 200

    def test_unknown_mode_is_refused(self):
        with pytest.raises(ValueError):
            generate_secret("sk", "prod")


class TestMalformedTokens:
    @pytest.mark.parametrize(
        "token",
        [
            "",
            LETTERS_KEY[:-1],  # one short
            LETTERS_KEY + "0",  # one long
            LETTERS_KEY[:-1]
            + ("p" if LETTERS_KEY[-1] != "p" else "q"),  # checksum off by one digit
            LETTERS_KEY[:8] + "b" + LETTERS_KEY[9:],  # body changed, checksum stale
            LETTERS_KEY.replace("sk_live_", "sk_prod_"),
            LETTERS_KEY.replace("sk_live_", "pk_live_"),
            LETTERS_KEY.replace("sk_live_", "sk-live_"),
            LETTERS_KEY.replace("sk_live_", "sk_live-"),
            LETTERS_KEY.replace("sk_live_", "SK_LIVE_"),
            LETTERS_KEY.replace("sk_live_", "sk_test_"),  # mode is covered by the checksum
            LETTERS_KEY[:20] + "-" + LETTERS_KEY[21:],  # not base62
            LETTERS_KEY[:20] + "é" + LETTERS_KEY[21:],
            " " + LETTERS_KEY[1:],
        ],
    )
    def test_refused_without_a_store(self, token):
        assert parse_mode(token, "sk") is None


class TestHashing:
    def test_hash_is_sha256_hex_of_the_secret(self):
        assert hash_secret(LETTERS_KEY) == hashlib.sha256(LETTERS_KEY.encode()).hexdigest()
        assert re.fullmatch(r"[0-9a-f]{64}", hash_secret(PADDED_KEY))

    async def test_store_holds_only_the_hash(self, redis_client, base_config):
        config = parse_config(base_config())
        service = service_for(redis_client, config)
        account = await new_account(service)
        key_id, secret = await new_key(service, account, permissions=["read"])
        prefix = config.redis.key_prefix
        dump = []
        async for name in redis_client.scan_iter(match=prefix + "*"):
            kind = await redis_client.type(name)
            if kind == "string":
                dump.append(name + " " + (await redis_client.get(name)))
            elif kind == "hash":
                dump.append(name + " " + repr(await redis_client.hgetall(name)))
            elif kind == "zset":
                dump.append(name + " " + repr(await redis_client.zrange(name, 0, -1)))
            elif kind == "list":
                dump.append(name + " " + repr(await redis_client.lrange(name, 0, -1)))
            elif kind == "stream":
                dump.append(name + " " + repr(await redis_client.xrange(name)))
        text = "\n".join(dump)
        assert hash_secret(secret) in text
        assert secret not in text
        assert secret[8:40] not in text  # not even the random part
        record = await service.store.get_key(key_id)
        assert record.last4 == secret[-4:] and record.prefix == "sk_live_"


class TestIds:
    def test_ids_are_opaque_and_url_safe(self):
        for kind in ("key", "acct"):
            ident = new_id(kind)
            assert re.fullmatch(rf"{kind}_[0-9A-Za-z]{{20}}", ident)
        assert len({new_id("key") for _ in range(500)}) == 500

    async def test_key_id_is_not_derived_from_the_secret(self, redis_client, base_config):
        service = service_for(redis_client, parse_config(base_config()))
        account = await new_account(service)
        assert account.startswith("acct_")
        key_id, secret = await new_key(service, account)
        assert key_id.startswith("key_")
        body = key_id.removeprefix("key_")
        assert body not in secret and body not in hash_secret(secret)
