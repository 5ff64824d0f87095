"""Config loading: the shipped ini, typed values, and one-line errors naming the key."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import pytest
from twisted.logger import LogLevel

from m2mgw.config import (
    CONFIG_ENV,
    SYSTEM_CONFIG,
    ConfigError,
    GatewayConfig,
    ProtocolConfig,
    config_path,
    default_key_path,
    derive_public_url,
    load_config,
    parse_config,
    parse_duration,
    sample_config,
)

SHIPPED_INI = Path(__file__).resolve().parents[2] / "etc" / "m2mgw.ini"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="etc/m2mgw.ini")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("etc/m2mgw.ini: ")
    return message


def test_shipped_ini_loads_and_equals_defaults() -> None:
    config = load_config(str(SHIPPED_INI))
    assert config == GatewayConfig(source=str(SHIPPED_INI))
    assert config.sms.enabled is False
    assert config.registry.database == "m2mgw.db"
    assert config.app.listen is None


def test_shipped_ini_documents_every_key() -> None:
    """Each key of each section appears in the shipped file, preceded by a comment."""
    lines = SHIPPED_INI.read_text().splitlines()
    for section in fields(GatewayConfig):
        if section.name == "source":
            continue
        for key in fields(section.default_factory):
            index = next(
                (i for i, line in enumerate(lines) if line.split("=")[0].strip() == key.name),
                None,
            )
            assert index is not None, f"[{section.name}] {key.name} missing"
            assert lines[index - 1].startswith("#"), f"[{section.name}] {key.name} uncommented"


def test_defaults_match_the_profile_parameters() -> None:
    protocol = ProtocolConfig()
    assert protocol.accepted_versions == (0x0300, 0x0301)
    assert protocol.answer_timeout_ip == 15
    assert protocol.udp_sends == 3
    assert protocol.answer_timeout_sms == 180
    assert protocol.response_cache_entries == 32
    assert protocol.fragment_threshold == 900
    assert protocol.file_block_max == 887
    assert protocol.credential_ttl is None
    assert protocol.credential_renew_margin == 7 * 86400
    assert protocol.default_sync_tags == (0x0002, 0x0007, 0x0009, 0x000A, 0x0011)
    assert protocol.queue_ttl == 86400


def test_typed_values() -> None:
    config = parse_config(
        """
        [udp]
        port = 0
        enabled = off
        [protocol]
        accepted_versions = 0x0301
        queue_ttl = 2d
        credential_ttl = 90d   ; inline comment
        register_op3_digest_optional = yes
        default_sync_tags =
        [app]
        listen = tcp:5300:interface=127.0.0.1
        [sms]
        device = /dev/ttyUSB0
        send_rate = 0.5
        [log]
        level = DEBUG
        """.replace("\n        ", "\n")
    )
    assert (config.udp.port, config.udp.enabled) == (0, False)
    assert config.protocol.accepted_versions == (0x0301,)
    assert config.protocol.queue_ttl == 2 * 86400
    assert config.protocol.credential_ttl == 90 * 86400
    assert config.protocol.register_op3_digest_optional is True
    assert config.protocol.default_sync_tags == ()
    assert config.app.listen == "tcp:5300:interface=127.0.0.1"
    assert config.sms.enabled and config.sms.send_rate == 0.5
    assert config.log.level is LogLevel.debug


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("5m", 300), ("24h", 86400), ("7d", 604800), ("1.5s", 1.5),
     ("2 H", 7200)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "value"),
    [("yes", True), ("True", True), ("on", True), ("1", True),
     ("no", False), ("FALSE", False), ("off", False), ("0", False)],
)
def test_booleans(text: str, value: bool) -> None:
    assert parse_config(f"[udp]\nenabled = {text}\n").udp.enabled is value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[udp]\nport = abc", "[udp] port: expected an integer 0-65535, got 'abc'"),
        ("[udp]\nport = 70000", "[udp] port: expected an integer 0-65535, got '70000'"),
        ("[udp]\nenabled = maybe", "[udp] enabled: expected a boolean"),
        ("[protocol]\nqueue_ttl = 5x", "[protocol] queue_ttl: expected a duration"),
        ("[protocol]\nanswer_timeout_ip = 2d", "[protocol] answer_timeout_ip: expected a duration"),
        ("[protocol]\ncredential_ttl = forever", "credential_ttl: expected a duration"),
        ("[protocol]\naccepted_versions = 0x0300, zz",
         "[protocol] accepted_versions: expected a comma list"),
        ("[protocol]\naccepted_versions =", "[protocol] accepted_versions: expected a comma"),
        ("[protocol]\ndefault_sync_tags = 0x10000", "[protocol] default_sync_tags: expected"),
        ("[protocol]\nreassembly_max_parts = 129", "reassembly_max_parts: expected an integer"),
        ("[registry]\nserial_prefix = A972", "[registry] serial_prefix: expected exactly 8"),
        ("[registry]\ndatabase =", "[registry] database: expected a non-empty value"),
        ("[registry]\nurl = mysql://db/m2mgw", "[registry] url: expected empty, or a URL"),
        ("[registry]\nurl = postgresql://db:port/m2mgw", "[registry] url: expected empty"),
        ("[registry]\nurl = m2mgw.db", "[registry] url: expected empty, or a URL"),
        ("[registry]\nnode = node a", "[registry] node: expected empty, or 1-48 of"),
        ("[registry]\nnode = " + "n" * 49, "[registry] node: expected empty, or 1-48 of"),
        ("[tcp]\nlisten = bogus:1", "[tcp] listen: expected 'none' or a server endpoint"),
        ("[tcp]\nlisten = tcp:http", "[tcp] listen: expected"),
        ("[tcp]\nlisten = tcp:5236:iface=1.2.3.4", "[tcp] listen: expected"),
        ("[tcp]\nlisten =", "[tcp] listen: expected"),
        ("[http]\npublic_url = ftp://x", "[http] public_url: expected an http:// base URL"),
        ("[http]\nlisten = tcp:8080", "[http] public_url: expected an explicit value"),
        ("[sms]\nplatform_number = 1380abc", "[sms] platform_number: expected a phone number"),
        ("[sms]\nsend_rate = 0", "[sms] send_rate: expected a number"),
        ("[log]\nlevel = loud", "[log] level: expected one of debug"),
        ("[protocol]\nfile_block_max = 900", "[protocol] file_block_max: must be at most"),
    ],
)
def test_bad_values_name_section_and_key(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_unknown_key_and_section_are_errors() -> None:
    assert error_of("[udp]\nprot = 1") == (
        "etc/m2mgw.ini: [udp] prot: unknown key (did you mean 'port'?)"
    )
    assert "[smss]: unknown section (did you mean 'sms'?)" in error_of("[smss]\n")
    assert "[DEFAULT]: section not supported" in error_of("[DEFAULT]\nport = 1\n")


def test_syntax_errors_are_one_line() -> None:
    assert "line 1" in error_of("port = 1\n")
    assert "[udp] port: duplicate key" in error_of("[udp]\nport = 1\nport = 2\n")
    assert "[udp]: duplicate section" in error_of("[udp]\n[udp]\n")


def test_unreadable_file(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory.ini"
    directory.mkdir()
    with pytest.raises(ConfigError, match=rf"^{directory}: cannot read"):
        load_config(str(directory))


def test_public_url_is_derived_from_listen() -> None:
    assert parse_config("[http]\nlisten = tcp:9000:interface=192.0.2.1").http.public_url == (
        "http://192.0.2.1:9000"
    )
    assert derive_public_url(r"tcp6:80:interface=\:\:1") == "http://[::1]:80"
    assert parse_config("[http]\nlisten = none").http.public_url == ""
    explicit = parse_config("[http]\nlisten = tcp:80\npublic_url = http://gw.example:80/")
    assert explicit.http.public_url == "http://gw.example:80"


def test_backpressure_watermarks() -> None:
    config = parse_config("[registry]\nwrite_watermarks = 100, 10\nrow_watermarks = 9000, 0\n")
    assert config.registry.write_watermarks == (100, 10)
    assert config.registry.row_watermarks == (9000, 0)
    for bad in ("10, 100", "5", "a, b", "10, 10", "10, -1"):
        with pytest.raises(ConfigError, match=r"\[registry\] write_watermarks"):
            parse_config(f"[registry]\nwrite_watermarks = {bad}\n")


def test_config_path_prefers_option_then_environment_then_system_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert config_path(None) == SYSTEM_CONFIG == "/etc/m2mgw/m2mgw.ini"
    monkeypatch.setenv(CONFIG_ENV, "/srv/gw.ini")
    assert config_path(None) == "/srv/gw.ini"
    assert config_path("given.ini") == "given.ini"


def test_a_missing_config_file_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "absent.ini"))
    assert "no such configuration file" in str(info.value)
    assert "m2mgw sample-config" in str(info.value)


def test_the_shipped_sample_is_the_checkout_ini_and_parses_to_the_defaults() -> None:
    sample = sample_config()
    assert SHIPPED_INI.read_text() == sample
    assert parse_config(sample, source="sample") == GatewayConfig(source="sample")


def test_default_compat_and_the_deprecated_register_op3_switch() -> None:
    """Spec 1.6 profiles for a whole deployment; the old PD-06 switch means simcom (D-238)."""
    assert parse_config("").protocol.default_compat == "strict"
    config = parse_config("[protocol]\ndefault_compat = cmcc-javame\n")
    assert config.protocol.default_compat == "cmcc-javame"
    assert error_of("[protocol]\ndefault_compat = lenient\n") == (
        "etc/m2mgw.ini: [protocol] default_compat: expected one of strict, cmcc-javame, "
        "simcom, got 'lenient'"
    )
    old = parse_config("[protocol]\nregister_op3_digest_optional = yes\n").protocol
    assert (old.register_op3_digest_optional, old.default_compat) == (True, "simcom")
    both = "[protocol]\nregister_op3_digest_optional = yes\ndefault_compat = simcom\n"
    assert parse_config(both).protocol.default_compat == "simcom"
    message = error_of(
        "[protocol]\nregister_op3_digest_optional = yes\ndefault_compat = cmcc-javame\n"
    )
    assert "contradicts default_compat = cmcc-javame" in message
    assert parse_config("[protocol]\nregister_op3_digest_optional = no\n").protocol == (
        parse_config("").protocol
    )


def test_registry_url_selects_postgresql_and_defaults_to_sqlite() -> None:
    assert parse_config("").registry.url == ""
    for url in ("postgresql://m2mgw@db.example:5432/m2mgw?sslmode=verify-full",
                "postgres:///m2mgw", "postgresql://[::1]/m2mgw"):
        assert parse_config(f"[registry]\nurl = {url}\n").registry.url == url


def test_default_key_path_is_beside_the_database() -> None:
    assert default_key_path("m2mgw.db") == "m2mgw.key"
    assert default_key_path("/var/lib/m2mgw/m2mgw.db") == "/var/lib/m2mgw/m2mgw.key"
    assert default_key_path("data/gw.db") == os.path.join("data", "m2mgw.key")
