"""Settings: defaults, environment parsing, one ConfigError naming the key per bad value."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatepass.config import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_PASS_TTL,
    MAX_PASS_TTL,
    Settings,
    TopicNames,
)
from gatepass.errors import ConfigError


def test_defaults() -> None:
    s = Settings()
    assert (s.bootstrap, s.topic_prefix, s.partitions, s.replication) == (
        "127.0.0.1:9092", "gatepass.", 4, 1)
    assert DEFAULT_BOOTSTRAP == s.bootstrap
    assert s.home == Path(".gatepass")
    assert (s.app_id, s.web_host, s.web_port, s.web_url) == (
        "gatepass-worker", "127.0.0.1", 6066, "http://127.0.0.1:6066")
    assert s.issuer == "gatepass"
    assert s.pass_ttl == DEFAULT_PASS_TTL == timedelta(minutes=5)
    assert MAX_PASS_TTL == timedelta(hours=1)
    assert (s.intent_max_age, s.intent_max_skew) == (timedelta(minutes=2), timedelta(seconds=30))
    assert s.policy_dir is None
    assert s.log_level == "info"
    assert s.require_signed_intents is False  # agents with a registered key must sign anyway
    assert s.keystore_dir == Path(".gatepass/keys")
    assert s.jwks_file == Path(".gatepass/jwks.json")


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().partitions = 8  # type: ignore[misc]


def test_load_from_an_empty_environment_gives_the_defaults() -> None:
    assert Settings.load(env={}) == Settings()


def test_topic_names_share_the_prefix() -> None:
    t = Settings(topic_prefix="acme-prod.").topics
    assert isinstance(t, TopicNames)
    assert {
        "intents": t.intents, "identity": t.identity, "verdicts": t.verdicts,
        "denials": t.denials, "orphans": t.orphans, "audit": t.audit,
        "dead_letter": t.dead_letter, "keys": t.keys, "orphan_checks": t.orphan_checks,
    } == {
        "intents": "acme-prod.intents", "identity": "acme-prod.identity",
        "verdicts": "acme-prod.verdicts", "denials": "acme-prod.denials",
        "orphans": "acme-prod.orphan-alerts", "audit": "acme-prod.audit",
        "dead_letter": "acme-prod.dead-letter", "keys": "acme-prod.keys",
        "orphan_checks": "acme-prod.orphan-checks",
    }


ENV_CASES: list[tuple[str, str, str, Any]] = [
    ("GATEPASS_BOOTSTRAP", "kafka-1:9092,kafka-2:9092", "bootstrap", "kafka-1:9092,kafka-2:9092"),
    ("GATEPASS_TOPIC_PREFIX", "acme-prod.", "topic_prefix", "acme-prod."),
    ("GATEPASS_TOPIC_PREFIX", "", "topic_prefix", "gatepass."),  # empty means unset
    ("GATEPASS_PARTITIONS", "12", "partitions", 12),
    ("GATEPASS_PARTITIONS", " 8 ", "partitions", 8),
    ("GATEPASS_REPLICATION", "3", "replication", 3),
    ("GATEPASS_HOME", "/var/lib/gatepass", "home", Path("/var/lib/gatepass")),
    ("GATEPASS_APP_ID", "gp-eu", "app_id", "gp-eu"),
    ("GATEPASS_WEB_HOST", "0.0.0.0", "web_host", "0.0.0.0"),
    ("GATEPASS_WEB_PORT", "8080", "web_port", 8080),
    ("GATEPASS_ISSUER", "https://gatepass.example", "issuer", "https://gatepass.example"),
    ("GATEPASS_PASS_TTL_SECONDS", "90", "pass_ttl", timedelta(seconds=90)),
    ("GATEPASS_PASS_TTL_SECONDS", "3600", "pass_ttl", timedelta(hours=1)),
    ("GATEPASS_PASS_TTL_SECONDS", "0.5", "pass_ttl", timedelta(milliseconds=500)),
    ("GATEPASS_INTENT_MAX_AGE_SECONDS", "600", "intent_max_age", timedelta(minutes=10)),
    ("GATEPASS_INTENT_MAX_SKEW_SECONDS", "0", "intent_max_skew", timedelta(0)),
    ("GATEPASS_POLICY_DIR", "/etc/gatepass/policies", "policy_dir",
     Path("/etc/gatepass/policies")),
    ("GATEPASS_LOG_LEVEL", "debug", "log_level", "debug"),
    ("GATEPASS_REQUIRE_SIGNED_INTENTS", "true", "require_signed_intents", True),
    ("GATEPASS_REQUIRE_SIGNED_INTENTS", " ON ", "require_signed_intents", True),
    ("GATEPASS_REQUIRE_SIGNED_INTENTS", "1", "require_signed_intents", True),
    ("GATEPASS_REQUIRE_SIGNED_INTENTS", "false", "require_signed_intents", False),
    ("GATEPASS_REQUIRE_SIGNED_INTENTS", "no", "require_signed_intents", False),
    ("GATEPASS_REQUIRE_SIGNED_INTENTS", "", "require_signed_intents", False),  # unset
]


@pytest.mark.parametrize(("env_key", "raw", "field", "value"), ENV_CASES,
                         ids=[f"{c[0]}={c[1]!r}" for c in ENV_CASES])
def test_environment_is_parsed(env_key: str, raw: str, field: str, value: Any) -> None:
    s = Settings.load(env={env_key: raw})
    assert getattr(s, field) == value
    assert type(getattr(s, field)) is type(value)


def test_unrelated_environment_is_ignored() -> None:
    assert Settings.load(env={"GATEPASS_NOPE": "x", "PARTITIONS": "9", "gatepass_partitions": "9"}
                         ) == Settings()


def test_overrides_win_over_the_environment_and_none_means_unset() -> None:
    env = {"GATEPASS_PARTITIONS": "12", "GATEPASS_BOOTSTRAP": "env:9092"}
    s = Settings.load(env=env, partitions=6, bootstrap=None)
    assert (s.partitions, s.bootstrap) == (6, "env:9092")


def test_load_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEPASS_PARTITIONS", "7")
    assert Settings.load().partitions == 7


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("blank bootstrap", {"bootstrap": "   "}, "bootstrap"),
    ("prefix with spaces", {"topic_prefix": "gate pass."}, "topic_prefix"),
    ("prefix with a slash", {"topic_prefix": "a/b"}, "topic_prefix"),
    ("prefix too long", {"topic_prefix": "p" * 101}, "topic_prefix"),
    ("zero partitions", {"partitions": 0}, "partitions"),
    ("negative partitions", {"partitions": -4}, "partitions"),
    ("too many partitions", {"partitions": 1025}, "partitions"),
    ("zero replication", {"replication": 0}, "replication"),
    ("replication too high", {"replication": 33}, "replication"),
    ("port 0", {"web_port": 0}, "web_port"),
    ("port too high", {"web_port": 65536}, "web_port"),
    ("pass ttl 0", {"pass_ttl": timedelta(0)}, "pass_ttl"),
    ("negative pass ttl", {"pass_ttl": timedelta(seconds=-1)}, "pass_ttl"),
    ("pass ttl over an hour", {"pass_ttl": timedelta(hours=1, seconds=1)}, "pass_ttl"),
    ("zero intent max age", {"intent_max_age": timedelta(0)}, "intent_max_age"),
    ("negative skew", {"intent_max_skew": timedelta(seconds=-1)}, "intent_max_skew"),
]


@pytest.mark.parametrize(("label", "values", "key"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_value_names_its_key(label: str, values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(**values)
    assert info.value.key == key
    assert info.value.code == "config_invalid"
    assert str(info.value).startswith(f"{key}: ")


def test_limits_themselves_are_allowed() -> None:
    s = Settings(partitions=1024, replication=32, web_port=65535, pass_ttl=MAX_PASS_TTL,
                 topic_prefix="", intent_max_skew=timedelta(0))
    assert s.partitions == 1024 and s.topics.intents == "intents"


INVALID_ENV: list[tuple[str, str, str]] = [
    ("GATEPASS_PARTITIONS", "four", "partitions"),
    ("GATEPASS_PARTITIONS", "4.0", "partitions"),
    ("GATEPASS_PARTITIONS", "1e3", "partitions"),
    ("GATEPASS_PARTITIONS", "0", "partitions"),
    ("GATEPASS_REPLICATION", "x", "replication"),
    ("GATEPASS_WEB_PORT", "http", "web_port"),
    ("GATEPASS_WEB_PORT", "99999", "web_port"),
    ("GATEPASS_PASS_TTL_SECONDS", "5m", "pass_ttl"),
    ("GATEPASS_PASS_TTL_SECONDS", "nan", "pass_ttl"),
    ("GATEPASS_PASS_TTL_SECONDS", "0", "pass_ttl"),
    ("GATEPASS_PASS_TTL_SECONDS", "3601", "pass_ttl"),
    ("GATEPASS_INTENT_MAX_AGE_SECONDS", "-5", "intent_max_age"),
    ("GATEPASS_INTENT_MAX_SKEW_SECONDS", "soon", "intent_max_skew"),
    ("GATEPASS_TOPIC_PREFIX", "gate pass.", "topic_prefix"),
    ("GATEPASS_BOOTSTRAP", "  ", "bootstrap"),
    ("GATEPASS_REQUIRE_SIGNED_INTENTS", "maybe", "require_signed_intents"),
    ("GATEPASS_REQUIRE_SIGNED_INTENTS", "2", "require_signed_intents"),
]


@pytest.mark.parametrize(("env_key", "raw", "key"), INVALID_ENV,
                         ids=[f"{c[0]}={c[1]!r}" for c in INVALID_ENV])
def test_invalid_environment_value_names_the_field(env_key: str, raw: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env={env_key: raw})
    assert info.value.key == key


def test_unparsable_value_is_quoted_in_the_message() -> None:
    with pytest.raises(ConfigError, match=r"partitions: not a valid int: 'four'"):
        Settings.load(env={"GATEPASS_PARTITIONS": "four"})


@pytest.mark.parametrize(("env_key", "raw", "key"), [
    ("GATEPASS_PASS_TTL_SECONDS", "inf", "pass_ttl"),
    ("GATEPASS_PASS_TTL_SECONDS", "1e20", "pass_ttl"),
    ("GATEPASS_INTENT_MAX_AGE_SECONDS", "inf", "intent_max_age"),
    ("GATEPASS_INTENT_MAX_SKEW_SECONDS", "1e20", "intent_max_skew"),
])
def test_overflowing_seconds_are_a_config_error(env_key: str, raw: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env={env_key: raw})
    assert info.value.key == key


def test_prefix_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env={"GATEPASS_TOPIC_PREFIX": "gatepass.\n"})
    assert info.value.key == "topic_prefix"


# ---- to_env ------------------------------------------------------------------------------
def test_to_env_names_the_documented_keys() -> None:
    env = Settings().to_env()
    assert env["GATEPASS_BOOTSTRAP"] == "127.0.0.1:9092"
    assert env["GATEPASS_TOPIC_PREFIX"] == "gatepass."
    assert env["GATEPASS_PARTITIONS"] == "4"
    assert env["GATEPASS_HOME"] == ".gatepass"
    assert env["GATEPASS_PASS_TTL_SECONDS"] == "300.0"
    assert "GATEPASS_POLICY_DIR" not in env  # None is not written
    assert not any(k.startswith("GATEPASS_EXTRA") for k in env)
    assert all(k.startswith("GATEPASS_") and isinstance(v, str) for k, v in env.items())


def test_to_env_round_trips_through_load() -> None:
    s = Settings(bootstrap="kafka-1:9092,kafka-2:9092", topic_prefix="acme-prod.",
                 partitions=12, replication=3, home=Path("/var/lib/gatepass"), app_id="gp-eu",
                 web_host="0.0.0.0", web_port=8080, issuer="https://gatepass.example",
                 pass_ttl=timedelta(seconds=90), intent_max_age=timedelta(minutes=10),
                 intent_max_skew=timedelta(0), policy_dir=Path("/etc/gatepass/policies"),
                 log_level="debug", require_signed_intents=True)
    assert Settings.load(env=s.to_env()) == s


@given(ttl_us=st.integers(min_value=1, max_value=3600 * 10**6),
       age_us=st.integers(min_value=1, max_value=10**12),
       skew_us=st.integers(min_value=0, max_value=10**10),
       partitions=st.integers(min_value=1, max_value=1024))
def test_to_env_round_trips_any_valid_durations(ttl_us: int, age_us: int, skew_us: int,
                                                partitions: int) -> None:
    s = Settings(pass_ttl=timedelta(microseconds=ttl_us),
                 intent_max_age=timedelta(microseconds=age_us),
                 intent_max_skew=timedelta(microseconds=skew_us), partitions=partitions)
    assert Settings.load(env=s.to_env()) == s


def test_with_changes_one_value_and_validates_it() -> None:
    s = Settings().with_(partitions=8)
    assert s.partitions == 8 and s.topic_prefix == "gatepass."
    with pytest.raises(ConfigError) as info:
        Settings().with_(partitions=0)
    assert info.value.key == "partitions"


# ---- dedupe horizon ----------------------------------------------------------------------
@pytest.mark.parametrize(("ttl", "age", "skew"), [
    (timedelta(minutes=5), timedelta(minutes=2), timedelta(seconds=30)),
    (timedelta(hours=1), timedelta(hours=6), timedelta(minutes=5)),
    (timedelta(seconds=1), timedelta(seconds=1), timedelta(0)),
])
def test_dedupe_horizon_outlives_every_pass_and_every_fresh_intent(
        ttl: timedelta, age: timedelta, skew: timedelta) -> None:
    s = Settings(pass_ttl=ttl, intent_max_age=age, intent_max_skew=skew)
    assert s.dedupe_horizon > s.pass_ttl + s.intent_max_age
    assert s.dedupe_horizon > s.pass_ttl + s.intent_max_age + s.intent_max_skew


def test_default_dedupe_horizon() -> None:
    # pass TTL + intent age + skew + approval timeout + 5 minutes
    assert Settings().dedupe_horizon == timedelta(minutes=5 + 2 + 5 + 5, seconds=30)


def test_approval_settings_from_the_environment() -> None:
    s = Settings.load({"GATEPASS_APPROVAL_TIMEOUT_SECONDS": "90",
                       "GATEPASS_APPROVAL_WEBHOOK_URL": "https://hooks.example/approvals",
                       "GATEPASS_APPROVAL_WEBHOOK_SECRET": "whsec-very-secret"})
    assert s.approval_timeout == timedelta(seconds=90)
    assert s.approval_webhook_secret is not None
    assert s.approval_webhook_secret.reveal() == "whsec-very-secret"
    assert "whsec-very-secret" not in repr(s) and "whsec-very-secret" not in str(s)
    # a child process gets it back through the environment
    assert Settings.load(s.to_env()).approval_webhook_secret == s.approval_webhook_secret
    assert s.approval_base_url == s.web_url


@pytest.mark.parametrize(("env", "key"), [
    ({"GATEPASS_APPROVAL_TIMEOUT_SECONDS": "0"}, "approval_timeout"),
    ({"GATEPASS_APPROVAL_TIMEOUT_SECONDS": "3601"}, "approval_timeout"),
    ({"GATEPASS_APPROVAL_URL": "javascript:alert(1)"}, "approval_url"),
    ({"GATEPASS_APPROVAL_WEBHOOK_URL": "https://hooks.example/x"}, "approval_webhook_secret"),
    ({"GATEPASS_APPROVAL_WEBHOOK_URL": "file:///etc/passwd",
      "GATEPASS_APPROVAL_WEBHOOK_SECRET": "s"}, "approval_webhook_url"),
])
def test_bad_approval_settings_name_their_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load(env)
    assert err.value.key == key


def test_a_secret_cannot_be_pickled() -> None:
    import pickle

    from gatepass.config import Secret
    with pytest.raises(TypeError):
        pickle.dumps(Secret("x"))


@pytest.mark.parametrize("raw", ["-1", "601", "nan"])
def test_ready_wait_out_of_range_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load({"GATEPASS_READY_WAIT_SECONDS": raw})
    assert err.value.key == "ready_wait"


def test_ready_wait_zero_disables_the_start_up_hold() -> None:
    assert Settings.load({"GATEPASS_READY_WAIT_SECONDS": "0"}).ready_wait.total_seconds() == 0


@pytest.mark.parametrize("raw", ["-1", "5", "3601", "nan"])
def test_stall_exit_out_of_range_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load({"GATEPASS_STALL_EXIT_SECONDS": raw})
    assert err.value.key == "stall_exit"


def test_stall_exit_defaults_to_two_minutes_and_zero_turns_it_off() -> None:
    assert Settings().stall_exit.total_seconds() == 120
    assert Settings.load({"GATEPASS_STALL_EXIT_SECONDS": "0"}).stall_exit.total_seconds() == 0
    assert Settings.load({"GATEPASS_STALL_EXIT_SECONDS": "45"}).stall_exit.total_seconds() == 45
