"""Tests for mailer.config: mailer.toml, its defaults and its one-line errors."""

from __future__ import annotations

import errno
import logging
import socket
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from mailer.config import (
    STARTER_CONFIG,
    ClockConfig,
    Config,
    DeliveryConfig,
    IdentityConfig,
    RelayConfig,
    RetryConfig,
    SchedulerConfig,
    TimeoutsConfig,
    listen_error,
    load_config,
    parse_config,
)
from mailer.errors import ConfigError, UserError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailer.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return caught.value


# Defaults


def test_starter_config_parses_to_the_defaults(tmp_path: Path) -> None:
    """The file `mailer init` writes means exactly what an empty file means, as its header promises."""
    starter = load_config(write(tmp_path, STARTER_CONFIG))
    defaults = Config()
    assert starter.relay == defaults.relay == RelayConfig()
    assert starter.identities == defaults.identities == {"default": IdentityConfig()}
    assert starter.delivery == defaults.delivery == DeliveryConfig()
    assert starter.timeouts == defaults.timeouts == TimeoutsConfig()
    assert starter.retry == defaults.retry == RetryConfig()
    assert starter.clock == defaults.clock == ClockConfig()
    assert starter.scheduler == defaults.scheduler == SchedulerConfig()
    for key in ("store", "scenarios", "templates", "secret_key_file"):
        assert getattr(starter, key) == tmp_path / getattr(defaults, key)


def test_empty_file_gives_the_defaults_with_paths_beside_it(tmp_path: Path) -> None:
    """Every key is optional, and default paths are relative to the file's directory."""
    config = load_config(write(tmp_path, ""))
    assert config.path == tmp_path / "mailer.toml"
    assert config.store == tmp_path / "mailer.db"
    assert config.scenarios == tmp_path / "scenarios"
    assert config.retry == RetryConfig()
    assert config.identities == {"default": IdentityConfig()}


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    """A path written in mailer.toml is resolved against the directory holding it, not the cwd."""
    config = load_config(write(tmp_path, 'store = "data/m.db"\ntemplates = "tpl"\n'))
    assert config.store == tmp_path / "data" / "m.db"
    assert config.templates == tmp_path / "tpl"


def test_default_retry_policy_follows_rfc_5321() -> None:
    """Retries start at 20 minutes, back off to 4 hours and give up after 4 days by default."""
    retry = RetryConfig()
    assert (retry.first, retry.max_interval, retry.max_age) == (
        timedelta(minutes=20),
        timedelta(hours=4),
        timedelta(days=4),
    )
    assert retry.jitter == pytest.approx(0.2)


# Unknown keys


def test_unknown_section_key_names_dotted_key_line_and_suggestion(tmp_path: Path) -> None:
    """A misspelt key in a section is refused with its dotted name, its line and the key meant."""
    error = error_of(tmp_path, '[relay]\nhost = "mx.example"\nprot = 587\n')
    assert error.field == "relay.prot"
    assert error.line == 3
    assert error.hint == "did you mean relay.port?"
    assert str(error) == f"{tmp_path / 'mailer.toml'}:3: relay.prot: unknown key — did you mean relay.port?"


def test_unknown_top_level_table_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    """A misspelt section header is reported on its own line with the section meant."""
    error = error_of(tmp_path, 'store = "m.db"\n\n[retyr]\nfirst = "5m"\n')
    assert (error.field, error.line) == ("retyr", 3)
    assert error.hint == "did you mean retry?"


def test_unknown_key_without_close_match_lists_the_valid_keys(tmp_path: Path) -> None:
    """When nothing is close, the hint lists every key the section accepts."""
    error = error_of(tmp_path, "[delivery]\nzzzzzz = 1\n")
    assert error.field == "delivery.zzzzzz"
    assert error.hint is not None and error.hint.startswith("valid keys: ")
    assert "delivery.batch_size" in error.hint


def test_unknown_identity_key_is_refused(tmp_path: Path) -> None:
    """An identity accepts `from`, not the Python field name `from_`."""
    error = error_of(tmp_path, '[identities.sales]\nfrom_ = "Sales <s@acme.example>"\n')
    assert (error.field, error.line) == ("identities.sales.from_", 2)
    assert error.hint == "did you mean identities.sales.from?"


def test_config_error_is_a_user_error() -> None:
    """Config mistakes are user errors, so the CLI prints one line and exits 2."""
    assert issubclass(ConfigError, UserError)


# Types


@pytest.mark.parametrize(
    ("text", "field", "word"),
    [
        ('[relay]\nport = "25"\n', "relay.port", "a whole number"),
        ("[relay]\nport = true\n", "relay.port", "a whole number"),
        ("[relay]\nhost = 127\n", "relay.host", "a string"),
        ('[relay]\nverify_certificate = "yes"\n', "relay.verify_certificate", "true or false"),
        ("[delivery]\nconcurrency = 1.5\n", "delivery.concurrency", "a whole number"),
        ("[timeouts]\nconnect = true\n", "timeouts.connect", "a number"),
        ("store = 3\n", "store", "a string"),
        ("relay = 3\n", "relay", "a table"),
    ],
)
def test_wrong_type_names_the_key_and_the_expected_type(tmp_path: Path, text: str, field: str, word: str) -> None:
    """A value of the wrong type (booleans are not numbers) is refused, saying what to write."""
    error = error_of(tmp_path, text)
    assert error.field == field
    assert error.line == text.count("\n", 0, text.index(field.rpartition(".")[2])) + 1
    assert f"expected {word}" in error.problem


def test_whole_numbers_are_accepted_where_a_number_is_expected(tmp_path: Path) -> None:
    """`connect = 30` is a float setting written as an integer, and means 30.0 seconds."""
    config = load_config(write(tmp_path, "[timeouts]\nconnect = 30\n\n[clock]\nspeed = 3600\n"))
    assert config.timeouts.connect == 30.0 and isinstance(config.timeouts.connect, float)
    assert config.clock.speed == 3600.0


# Durations


def test_durations_are_read_from_marketer_notation(tmp_path: Path) -> None:
    """Retry and scheduler durations such as "20m", "1w" and "3h30m" become timedeltas."""
    config = load_config(
        write(
            tmp_path,
            '[retry]\nfirst = "20m"\nmax_interval = "3h30m"\nmax_age = "1w"\n\n'
            '[scheduler]\npoll_interval = "30s"\nentry_interval = "90s"\n',
        )
    )
    assert config.retry.first == timedelta(minutes=20)
    assert config.retry.max_interval == timedelta(hours=3, minutes=30)
    assert config.retry.max_age == timedelta(weeks=1)
    assert config.scheduler.poll_interval == timedelta(seconds=30)
    assert config.scheduler.entry_interval == timedelta(seconds=90)


@pytest.mark.parametrize("value", ['"20 minutes"', '"20M"', '"h"', '""'])
def test_bad_duration_is_refused_with_an_example(tmp_path: Path, value: str) -> None:
    """A duration that does not parse names the key and shows how to write one."""
    error = error_of(tmp_path, f"[retry]\njitter = 0.1\nfirst = {value}\n")
    assert (error.field, error.line) == ("retry.first", 3)
    assert "not a duration" in error.problem
    assert error.hint is not None and '"20m"' in error.hint


def test_duration_written_as_a_number_is_refused(tmp_path: Path) -> None:
    """`first = 20` is ambiguous (minutes? seconds?) and must be a string with a unit."""
    error = error_of(tmp_path, "[retry]\nfirst = 20\n")
    assert error.field == "retry.first"
    assert "expected a string" in error.problem


# Relay TLS and other checks


@pytest.mark.parametrize("mode", ["none", "starttls", "implicit"])
def test_known_tls_modes_are_accepted(tmp_path: Path, mode: str) -> None:
    """The three TLS modes the transport knows are accepted as written."""
    assert load_config(write(tmp_path, f'[relay]\ntls = "{mode}"\n')).relay.tls == mode


def test_unknown_tls_mode_is_refused_on_its_line(tmp_path: Path) -> None:
    """`tls = "ssl"` is refused naming relay.tls, its line and the three valid modes."""
    error = error_of(tmp_path, '[relay]\nhost = "mx.example"\ntls = "ssl"\n')
    assert (error.field, error.line) == ("relay.tls", 3)
    assert "'ssl'" in error.problem
    assert error.hint is not None and "starttls" in error.hint


@pytest.mark.parametrize("start", ["yesterday", "2026-01-05T08:00:00"])
def test_clock_start_must_be_an_aware_iso_instant(tmp_path: Path, start: str) -> None:
    """A clock start that is not ISO 8601 or has no UTC offset is refused."""
    error = error_of(tmp_path, f'[clock]\nstart = "{start}"\n')
    assert (error.field, error.line) == ("clock.start", 2)


def test_clock_start_with_offset_is_accepted(tmp_path: Path) -> None:
    """An ISO 8601 instant with an offset is a valid virtual-clock start."""
    config = load_config(write(tmp_path, '[clock]\nstart = "2026-01-05T08:00:00+09:00"\n'))
    assert config.clock.start == "2026-01-05T08:00:00+09:00"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[clock]\nspeed = 0\n", "clock.speed"),
        ("[clock]\nspeed = -2.0\n", "clock.speed"),
        ("[delivery]\nconcurrency = 0\n", "delivery.concurrency"),
        ("[delivery]\nbatch_size = -1\n", "delivery.batch_size"),
        ("[retry]\njitter = 1.5\n", "retry.jitter"),
        ("[retry]\njitter = -0.1\n", "retry.jitter"),
        ('[retry]\nfirst = "0"\n', "retry.first"),
    ],
)
def test_out_of_range_numbers_are_refused(tmp_path: Path, text: str, field: str) -> None:
    """A clock that does not run, a delivery setting below one or a retry policy that cannot wait is refused by name."""
    error = error_of(tmp_path, text)
    assert (error.field, error.line) == (field, 2)


# Identities


def test_identities_are_read_with_their_from_address(tmp_path: Path) -> None:
    """Each [identities.NAME] table becomes an identity whose `from` is split into name and address."""
    config = load_config(
        write(
            tmp_path,
            '[identities.marketing]\nfrom = "Acme Marketing <news@acme.example>"\n\n'
            '[identities.sales]\nfrom = "sales@mail.acme.example"\n'
            'return_path = "bounces@acme.example"\ndomain = "id.acme.example"\n',
        )
    )
    assert set(config.identities) == {"marketing", "sales"}
    marketing = config.identities["marketing"]
    assert (marketing.from_name, marketing.from_address) == ("Acme Marketing", "news@acme.example")
    assert marketing.envelope_sender == "news@acme.example"
    assert marketing.message_id_domain == "acme.example"
    sales = config.identities["sales"]
    assert (sales.from_name, sales.from_address) == ("", "sales@mail.acme.example")
    assert sales.envelope_sender == "bounces@acme.example"
    assert sales.message_id_domain == "id.acme.example"


def test_identity_without_an_address_is_refused(tmp_path: Path) -> None:
    """A `from` that holds only a name is refused on its line with an example."""
    error = error_of(tmp_path, '[identities.default]\nreply_to = ""\nfrom = "Acme Marketing"\n')
    assert (error.field, error.line) == ("identities.default.from", 3)
    assert error.hint is not None and "<news@acme.example>" in error.hint


def test_empty_identities_table_is_refused() -> None:
    """A configuration must leave at least one sending identity."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"identities": {}}, text="identities = {}\n")
    assert caught.value.field == "identities"


# Reading the file


def test_invalid_toml_is_one_error_with_its_line(tmp_path: Path) -> None:
    """A TOML syntax error becomes a ConfigError naming the file and line, not a traceback."""
    error = error_of(tmp_path, '[relay]\nhost = "a"\nport = \n')
    assert error.file == str(tmp_path / "mailer.toml")
    assert error.line == 3
    assert error.problem.startswith("not valid TOML")


def test_missing_file_suggests_mailer_init(tmp_path: Path) -> None:
    """A missing mailer.toml is a ConfigError telling the operator to run `mailer init`."""
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml")
    assert caught.value.hint is not None and "mailer init" in caught.value.hint


def test_parse_config_matches_the_parsed_starter_text() -> None:
    """parse_config over tomllib output accepts what load_config reads from disk."""
    config = parse_config(tomllib.loads(STARTER_CONFIG), text=STARTER_CONFIG, path=Path("/w/mailer.toml"))
    assert config.store == Path("/w/mailer.db")


# The secret key


def test_secret_key_is_read_and_stripped(tmp_path: Path) -> None:
    """A key file of at least 32 characters is returned without its trailing newline."""
    (tmp_path / "mailer.key").write_bytes(b"k" * 40 + b"\n")
    assert load_config(write(tmp_path, "")).secret_key() == b"k" * 40


def test_short_secret_key_is_refused(tmp_path: Path) -> None:
    """A key shorter than 32 characters is a ConfigError suggesting `mailer init --force`."""
    (tmp_path / "mailer.key").write_bytes(b"short\n")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "")).secret_key()
    assert caught.value.hint is not None and "--force" in caught.value.hint


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, True), (0o600, False), (0o400, False)])
def test_a_key_others_can_read_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool
) -> None:
    """A key file readable by group or others still works, but logs a warning naming it and `chmod 600`."""
    key = tmp_path / "mailer.key"
    key.write_bytes(b"k" * 40 + b"\n")
    key.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="mailer.config"):
        assert load_config(write(tmp_path, "")).secret_key() == b"k" * 40
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warned:
        assert len(warnings) == 1 and f"chmod 600 {key}" in warnings[0] and f"{mode:o}" in warnings[0], warnings
    else:
        assert warnings == []


def test_missing_secret_key_is_a_config_error(tmp_path: Path) -> None:
    """A missing key file is reported as a one-line ConfigError, not an OSError."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "")).secret_key()
    assert caught.value.file == str(tmp_path / "mailer.key")


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[relay]\nport = 99999\n', "relay.port"),
        ('[timeouts]\nconnect = -1\n', "timeouts.connect"),
        ('[retry]\nmax_age = "0"\n', "retry.max_age"),
        ('[scheduler]\npoll_interval = "0"\n', "scheduler.poll_interval"),
        ('[identities.default]\nfrom = "Acme\\r\\nBcc: x@example.org <news@acme.example>"\n', "identities.default.from"),
        ('[identities.default]\nfrom = "Acme news@acme.example"\n', "identities.default.from"),
    ],
    ids=["port", "negative-timeout", "zero-max-age", "zero-poll", "header-injection", "no-angle-brackets"],
)
def test_out_of_range_and_unsafe_values_are_refused(tmp_path: Path, toml: str, key: str) -> None:
    """Values that would spin the daemon, never connect or inject a header are errors naming the key."""
    path = tmp_path / "mailer.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.field == key


def test_keys_under_a_commented_section_header_get_their_line(tmp_path: Path) -> None:
    """`[relay]   # comment` still lets errors name the key's line."""
    path = tmp_path / "mailer.toml"
    path.write_text('[relay]                 # the relay\nhost = "x"\nport = "25"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.line == 3


# Warm-up, sending IPs and provider limits


def test_without_ips_there_is_one_ip_that_does_not_warm(tmp_path: Path) -> None:
    """No [ips]: one implicit IP "default" on the system's address, warm-up off: sending as before."""
    from mailer.providers import DEFAULT_LIMITS

    config = load_config(write(tmp_path, ""))
    assert list(config.ips) == ["default"] and not config.ips["default"].warmup
    assert not config.warmup.enabled and config.warmup.schedule == ()
    assert config.providers == DEFAULT_LIMITS
    starter = load_config(write(tmp_path, STARTER_CONFIG))
    assert (starter.warmup, starter.ips, starter.providers) == (config.warmup, config.ips, config.providers)


def test_warmup_ips_and_provider_overrides_are_read(tmp_path: Path) -> None:
    """[warmup], [ips.NAME] and [providers.NAME] are read; an override keeps the unwritten defaults."""
    config = load_config(write(tmp_path, (
        '[warmup]\nenabled = true\nschedule = [20, 40, 80]\nclean_period = "15m"\n'
        '[warmup.shares]\ngmail = 0.7\n'
        '[ips.main]\naddress = "192.0.2.10"\nhelo = "mail.acme.example"\nwarmup_start = "2026-01-05"\n'
        '[providers.docomo]\nconcurrency = 1\n'
    )))
    assert config.warmup.schedule == (20, 40, 80) and config.warmup.clean_period == timedelta(minutes=15)
    assert config.warmup.shares["gmail"] == 0.7 and config.warmup.shares["other"] == 0.5
    assert config.ips["main"].address == "192.0.2.10" and config.ips["main"].warmup
    assert (config.providers["docomo"].concurrency, config.providers["docomo"].per_minute) == (1, 60)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('[warmup]\nschedule = "fast"\n', "warmup.schedule"),
        ("[warmup]\nschedule = [50, 0]\n", "warmup.schedule"),
        ("[warmup]\nschedule = [100, 50]\n", "warmup.schedule"),
        ("[warmup.shares]\ngmail = 1.5\n", "warmup.shares.gmail"),
        ("[warmup.shares]\ngmal = 0.5\n", "warmup.shares.gmal"),
        ("[warmup]\nspread_hours = 30\n", "warmup.spread_hours"),
        ('[warmup]\nfirst_pause = "4h"\nmax_pause = "1h"\n', "warmup.max_pause"),
        ("[warmup]\nenabled = true\n", "warmup.enabled"),
        ('[warmup]\nenabled = true\n[ips.main]\naddress = "192.0.2.10"\n', "ips.main.warmup_start"),
        ('[ips.main]\nwarmup_start = "next monday"\n', "ips.main.warmup_start"),
        ('[ips.main]\naddress = "mail.acme.example"\n', "ips.main.address"),
        ('[ips.a]\naddress = "192.0.2.10"\n[ips.b]\naddress = "192.0.2.10"\n', "ips.b.address"),
        ("[providers.gmial]\nconcurrency = 2\n", "providers.gmial"),
        ("[providers.gmail]\nconcurrency = 0\n", "providers.gmail.concurrency"),
        ("[providers.gmail]\nburst = 3\n", "providers.gmail.burst"),
    ],
)
def test_warmup_mistakes_name_their_key(tmp_path: Path, text: str, field: str) -> None:
    """Each warm-up, IP or provider mistake is one error naming the key, on its line when it has one."""
    error = error_of(tmp_path, text)
    assert error.field == field
    table, _, key = field.rpartition(".")
    lines = text.splitlines()
    if f"[{table}]" in lines and any(line.startswith(f"{key} =") for line in lines):
        start = lines.index(f"[{table}]")
        expected = next(n for n, line in enumerate(lines[start:], start=start + 1) if line.startswith(f"{key} ="))
        assert error.line == expected


def test_a_misspelt_share_suggests_the_provider(tmp_path: Path) -> None:
    """`gmal` under [warmup.shares] suggests gmail."""
    assert error_of(tmp_path, "[warmup.shares]\ngmal = 0.5\n").hint == "did you mean warmup.shares.gmail?"


def test_an_ed25519_key_alone_is_refused_on_its_line(tmp_path: Path) -> None:
    """`ed25519_key_file` without `private_key_file` is refused: mail signed only with Ed25519 reads as unsigned to
    receivers that verify only RSA."""
    error = error_of(tmp_path, '[dkim]\nselector = "s1"\ned25519_key_file = "ed.pem"\n')
    assert (error.field, error.line) == ("dkim.ed25519_key_file", 3)
    assert error.hint is not None and "private_key_file" in error.hint


@pytest.mark.parametrize(
    ("error", "problem", "hint"),
    [
        (OSError(errno.EADDRINUSE, "in use"), "[::1]:80 is in use (another mailer serve, or another program)", "choose a free port"),
        (OSError(errno.EADDRNOTAVAIL, "cannot assign"), "::1 is not an address of this machine", "0.0.0.0 (every address)"),
        (OSError(errno.EACCES, "permission denied"), "not allowed to listen on port 80", "from 1024 up"),
        (socket.gaierror(socket.EAI_NONAME, "unknown"), "cannot resolve '::1'", "write an IP address"),
    ],
    ids=["in-use", "not-ours", "privileged", "unresolvable"],
)
def test_a_failed_bind_is_the_listen_settings_fault(error: OSError, problem: str, hint: str) -> None:
    """Each way a `listen` setting cannot be bound is a ConfigError naming the file and field, with what to do."""
    mistake = listen_error(error, listen="[::1]:80", field="api.listen", file=Path("/w/mailer.toml"))
    assert mistake is not None
    assert (mistake.file, mistake.field, mistake.problem) == ("/w/mailer.toml", "api.listen", problem)
    assert mistake.hint is not None and hint in mistake.hint


def test_a_bind_failure_not_of_the_setting_is_left_alone() -> None:
    """Running out of file descriptors is no mistake in mailer.toml: no ConfigError is made of it."""
    assert listen_error(OSError(errno.EMFILE, "too many open files"), listen="127.0.0.1:80", field="api.listen", file=None) is None
