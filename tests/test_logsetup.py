"""The log observer twistd gets from the plugin: level, format and destination."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure
from twisted.scripts.twistd import ServerOptions

from m2mgw import logsetup
from m2mgw.config import ConfigError, LogConfig, parse_config


def emit_through(observer: object) -> None:
    """A debug, an info and an error event, each with terminal keys."""
    publisher = LogPublisher(observer)  # type: ignore[arg-type]
    log = Logger(namespace="m2mgw.test", observer=publisher)
    log.debug("debug line {serial}", serial="S1")
    log.info("info line {serial}", serial="S2", command="LOGIN", sequence_id=3, peer="h:1")
    log.error("error line {serial}", serial="S3")


@pytest.mark.parametrize(
    ("level", "seen"),
    [
        (LogLevel.debug, ["S1", "S2", "S3"]),
        (LogLevel.info, ["S2", "S3"]),
        (LogLevel.error, ["S3"]),
    ],
)
def test_the_ini_level_filters_json_lines(level: LogLevel, seen: list[str]) -> None:
    out = io.StringIO()
    emit_through(logsetup.gateway_observer(LogConfig(level=level, format="json"), out))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["serial"] for e in events] == seen


def test_text_format_is_twistds_and_filtered_too() -> None:
    out = io.StringIO()
    emit_through(logsetup.gateway_observer(LogConfig(level=LogLevel.error), out))
    [line] = out.getvalue().splitlines()
    assert line.endswith("[m2mgw.test#error] error line S3")


def test_a_json_event_has_its_fields_as_keys() -> None:
    out = io.StringIO()
    emit_through(logsetup.gateway_observer(LogConfig(format="json"), out))
    event = json.loads(out.getvalue().splitlines()[0])
    assert event.pop("time").endswith("+00:00")
    assert event == {
        "level": "info",
        "namespace": "m2mgw.test",
        "text": "info line S2",
        "serial": "S2",
        "command": "LOGIN",
        "sequence_id": 3,
        "peer": "h:1",
    }


def test_json_renders_any_field_and_a_failure() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        failure = Failure()
    event = json.loads(
        logsetup.event_as_json(
            {
                "log_format": "{raw} {when}",
                "log_level": LogLevel.critical,
                "log_namespace": "x",
                "log_time": 0.0,
                "log_failure": failure,
                "log_source": object(),
                "raw": b"\x01\xff",
                "when": Path("/tmp"),
                "text": "a field named like a reserved key loses to it",
            }
        )
    )
    assert event["text"] == "b'\\x01\\xff' /tmp"
    assert (event["raw"], event["when"]) == ("01ff", "/tmp")
    assert event["time"] == "1970-01-01T00:00:00.000+00:00"
    assert "ZeroDivisionError" in event["traceback"]
    assert not any(key.startswith("log_") for key in event)


def twistd_options(
    tmp_path: Path, *args: str, ini: str = "[log]\nformat = json\n"
) -> ServerOptions:
    path = tmp_path / "m2mgw.ini"
    path.write_text(f"[registry]\ndatabase = {tmp_path / 'db'}\n{ini}")
    options = ServerOptions()
    options.parseOptions([*args, "m2mgw", "--config", str(path)])
    return options


def test_the_plugin_names_its_factory_and_it_honours_l_file(tmp_path: Path) -> None:
    log_file = tmp_path / "gw.log"
    options = twistd_options(tmp_path, "-n", "-l", str(log_file))
    assert options["logger"] is logsetup.twistd_observer
    emit_through(options["logger"]())
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [e["serial"] for e in events] == ["S2", "S3"]


def test_with_n_and_no_l_the_log_goes_to_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    options = twistd_options(tmp_path, "-n", ini="[log]\nlevel = error\n")
    emit_through(options["logger"]())
    [line] = out.getvalue().splitlines()
    assert "error line S3" in line


def test_a_logger_given_to_twistd_is_left_alone(tmp_path: Path) -> None:
    options = twistd_options(tmp_path, "-n", "--logger", "twisted.logger.textFileLogObserver")
    assert options["logger"].__module__ == "twisted.logger._file"


def test_a_daemon_cannot_log_to_stdout(tmp_path: Path) -> None:
    options = twistd_options(tmp_path, "-l", "-")
    with pytest.raises(SystemExit, match="Daemons cannot log to stdout"):
        options["logger"]()


def test_a_bad_format_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\[log\] format: expected one of text, json"):
        parse_config("[log]\nformat = xml\n")
