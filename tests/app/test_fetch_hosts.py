"""``[app] upgrade_source_hosts``: which hosts an Upgrade's sourceUrl may name."""

from __future__ import annotations

import pytest

from m2mgw.app.fetch import FetchError, check_url
from m2mgw.config import ConfigError, parse_config


def test_any_host_when_the_list_is_empty() -> None:
    check_url("http://10.1.2.3/fw.bin")
    check_url("https://files.example.com/fw.bin")


def test_only_listed_hosts_when_set() -> None:
    allowed = parse_config("[app]\nupgrade_source_hosts = Files.Example.com, ::1\n").app
    assert allowed.upgrade_source_hosts == ("files.example.com", "::1")
    check_url("https://files.example.com:8443/fw.bin", allowed.upgrade_source_hosts)
    check_url("http://[::1]:8080/fw.bin", allowed.upgrade_source_hosts)
    for url in ("http://127.0.0.1/fw.bin", "http://files.example.com.evil.net/fw.bin"):
        with pytest.raises(FetchError, match="not allowed"):
            check_url(url, allowed.upgrade_source_hosts)


@pytest.mark.parametrize("value", ["http://files.example.com", "host:8080", "a/b", "[::1]"])
def test_bad_host_entries_stop_start_up(value: str) -> None:
    with pytest.raises(ConfigError, match=r"\[app\] upgrade_source_hosts"):
        parse_config(f"[app]\nupgrade_source_hosts = {value}\n")
