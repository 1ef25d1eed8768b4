"""Connector settings: env and TOML, precedence, errors that name the key, secrets that hide."""

from __future__ import annotations

import pickle
from datetime import timedelta
from pathlib import Path

import pytest

from gatepass.config import Secret
from gatepass.connectors import ConnectorSettings
from gatepass.core import PrincipalStatus
from gatepass.errors import ConfigError
from unit.connectors.support import CLIENT_STATE, OKTA_AUTH, SCIM_TOKEN

ENV = {"GATEPASS_CONNECTOR_ENABLED": "okta,scim",
       "GATEPASS_CONNECTOR_OKTA_AUTHORIZATION": OKTA_AUTH,
       "GATEPASS_CONNECTOR_SCIM_TOKEN": SCIM_TOKEN}


def test_environment_enables_and_configures_connectors() -> None:
    s = ConnectorSettings.load(env={**ENV, "GATEPASS_CONNECTOR_PORT": "9000",
                                    "GATEPASS_CONNECTOR_SCIM_INACTIVE_STATUS": "offboarded",
                                    "GATEPASS_CONNECTOR_PUBLISH_TIMEOUT_SECONDS": "2.5"})
    assert s.enabled == ("okta", "scim")
    assert s.port == 9000 and s.host == "127.0.0.1"
    assert s.publish_timeout == timedelta(seconds=2.5)
    assert s.okta is not None and s.okta.authorization.matches(OKTA_AUTH)
    assert s.okta.principal_field == "alternateId"
    assert s.scim is not None and s.scim.inactive_status is PrincipalStatus.OFFBOARDED
    assert s.entra is None


def test_toml_file_then_environment_then_flags(tmp_path: Path) -> None:
    conf = tmp_path / "connectors.toml"
    conf.write_text(f"""
enabled = ["okta", "entra"]
port = 8100
[okta]
authorization = "{OKTA_AUTH}"
principal_field = "id"
[entra]
client_state = "{CLIENT_STATE}"
tenant_id = "84bd8158-6d4d-4958-8b9f-9d6445542f95"
principal_attribute = "mail"
""")
    s = ConnectorSettings.load(env={"GATEPASS_CONNECTOR_PORT": "8200"}, file=conf,
                               host="0.0.0.0")
    assert s.enabled == ("okta", "entra")
    assert s.port == 8200 and s.host == "0.0.0.0"
    assert s.okta is not None and s.okta.principal_field == "id"
    assert s.entra is not None and s.entra.principal_attribute == "mail"
    assert not s.entra.has_graph_credentials


def test_secret_read_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(SCIM_TOKEN + "\n")
    s = ConnectorSettings.load(env={"GATEPASS_CONNECTOR_ENABLED": "scim",
                                    "GATEPASS_CONNECTOR_SCIM_TOKEN_FILE":
                                        str(tmp_path / "token")})
    assert s.scim is not None and s.scim.token.matches(SCIM_TOKEN)


@pytest.mark.parametrize(("env", "key"), [
    ({"GATEPASS_CONNECTOR_ENABLED": ""}, "enabled"),
    ({"GATEPASS_CONNECTOR_ENABLED": "okta,ldap"}, "enabled"),
    ({"GATEPASS_CONNECTOR_ENABLED": "okta"}, "okta.authorization"),
    ({**ENV, "GATEPASS_CONNECTOR_OKTA_AUTHORIZATION": "short"}, "okta.authorization"),
    ({**ENV, "GATEPASS_CONNECTOR_OKTA_PRINCIPAL_FIELD": "email"}, "okta.principal_field"),
    ({**ENV, "GATEPASS_CONNECTOR_SCIM_INACTIVE_STATUS": "active"}, "scim.inactive_status"),
    ({**ENV, "GATEPASS_CONNECTOR_SCIM_PRINCIPAL_ATTRIBUTE": "id"},
     "scim.principal_attribute"),
    ({**ENV, "GATEPASS_CONNECTOR_PORT": "http"}, "port"),
    ({**ENV, "GATEPASS_CONNECTOR_PORT": "70000"}, "port"),
    ({**ENV, "GATEPASS_CONNECTOR_PUBLISH_TIMEOUT_SECONDS": "nan"}, "publish_timeout_seconds"),
    ({**ENV, "GATEPASS_CONNECTOR_PUBLIC_URL": "ftp://x"}, "public_url"),
    ({**ENV, "GATEPASS_CONNECTOR_OKTA_AUTHORISATION": OKTA_AUTH}, "okta_authorisation"),
    ({"GATEPASS_CONNECTOR_ENABLED": "entra",
      "GATEPASS_CONNECTOR_ENTRA_CLIENT_STATE": CLIENT_STATE,
      "GATEPASS_CONNECTOR_ENTRA_TENANT_ID": "contoso"}, "entra.tenant_id"),
    ({"GATEPASS_CONNECTOR_ENABLED": "entra",
      "GATEPASS_CONNECTOR_ENTRA_CLIENT_STATE": "x" * 129}, "entra.client_state"),
])
def test_a_bad_value_names_its_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        ConnectorSettings.load(env=env)
    assert err.value.key == key
    assert err.value.code == "config_invalid"


def test_unknown_key_in_the_file_is_an_error(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('enabled = ["scim"]\n[scim]\ntokn = "x"\n')
    with pytest.raises(ConfigError) as err:
        ConnectorSettings.load(env={}, file=conf)
    assert err.value.key == "scim.tokn"


def test_a_wrong_secret_value_is_never_echoed_in_the_error() -> None:
    leaked = "not-a-number-but-a-secret-0123456789"
    with pytest.raises(ConfigError) as err:
        ConnectorSettings.load(env={**ENV, "GATEPASS_CONNECTOR_DEDUPE_SIZE": leaked})
    assert leaked not in str(err.value)


def test_secrets_never_show_in_reprs_or_pickles() -> None:
    s = ConnectorSettings.load(env={**ENV, "GATEPASS_CONNECTOR_ENABLED": "okta,scim,entra",
                                    "GATEPASS_CONNECTOR_ENTRA_CLIENT_STATE": CLIENT_STATE,
                                    "GATEPASS_CONNECTOR_ENTRA_CLIENT_SECRET":
                                        "entra-app-secret-zzzzzzzzzzzz"})
    text = repr(s) + str(s)
    for secret in (OKTA_AUTH, SCIM_TOKEN, CLIENT_STATE, "entra-app-secret-zzzzzzzzzzzz"):
        assert secret not in text
    assert "Secret('**********')" in text
    with pytest.raises(TypeError):
        pickle.dumps(Secret(OKTA_AUTH))


def test_secret_comparison() -> None:
    secret = Secret(OKTA_AUTH)
    assert secret.matches(OKTA_AUTH)
    assert not secret.matches(OKTA_AUTH[:-1])
    assert not secret.matches(None)
    assert not secret.matches("")
    assert secret == Secret(OKTA_AUTH) and secret != Secret(SCIM_TOKEN)
