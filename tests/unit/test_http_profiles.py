"""Pool profiles: the documented values, the connector they build, the lookup's errors."""

from __future__ import annotations

import aiohttp
import pytest

from resilient.errors import ConfigError
from resilient.http import PROFILES, Profile, profile, session


def test_three_profiles_with_documented_values() -> None:
    table = {
        name: (p.limit, p.limit_per_host, p.keepalive_timeout, p.ttl_dns_cache, p.read_bufsize)
        for name, p in PROFILES.items()
    }
    assert table == {
        "default": (100, 50, 4.0, 10, None),
        "low-latency": (200, 100, 30.0, 60, None),
        "high-throughput": (400, 0, 30.0, 300, 256 * 1024),
    }


def test_a_host_may_hold_at_most_its_share_of_the_pool() -> None:
    for p in PROFILES.values():
        assert p.limit_per_host == 0 or p.limit_per_host <= p.limit // 2


def test_lookup_by_name_or_object_and_a_clear_error_otherwise() -> None:
    assert profile("low-latency") is PROFILES["low-latency"]
    custom = Profile("mine", limit=10, limit_per_host=5, keepalive_timeout=1.0, ttl_dns_cache=None)
    assert profile(custom) is custom
    with pytest.raises(ConfigError) as info:
        profile("fast")
    assert info.value.field == "profile"
    assert "'default'" in str(info.value)


async def test_the_connector_carries_the_profile() -> None:
    connector = PROFILES["high-throughput"].connector()
    try:
        assert (connector.limit, connector.limit_per_host) == (400, 0)
        assert connector.use_dns_cache
    finally:
        await connector.close()
    overridden = PROFILES["default"].connector(limit=7)
    try:
        assert overridden.limit == 7
    finally:
        await overridden.close()


async def test_session_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="timeouts"):
        session(timeout=aiohttp.ClientTimeout(total=1))
    with pytest.raises(ConfigError, match="profile"):
        session(profile="turbo")
    with pytest.raises(ConfigError, match="retries"):
        session(retries="many")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="timeouts"):
        session(timeouts=2.0)  # type: ignore[arg-type]
    connector = aiohttp.TCPConnector()
    try:
        with pytest.raises(ConfigError, match="connector"):
            session(profile="low-latency", connector=connector)
    finally:
        await connector.close()


async def test_high_throughput_sets_a_larger_read_buffer() -> None:
    async with session(profile="high-throughput") as s:
        connector = s.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert connector.limit == 400
        assert s._read_bufsize == 256 * 1024
