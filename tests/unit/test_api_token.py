"""The API token: BUDGETWARDEN_API_TOKEN, or one generated once into `<data-dir>/api-token`
(O_EXCL, mode 0600) and reused on every restart; the Host allow-list; docker-compose.yml
ships no default secret."""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import yaml

from schemas.errors import ConfigError
from sinks.http import allowed_hosts
from sinks.http_json import ApiTokenError, ensure_api_token, read_api_token, token_path
from streams.settings import ENV_VARS, Environment, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_generates_a_0600_token_and_restarts_reuse_it(tmp_path: Path) -> None:
    data = tmp_path / "var"
    old = os.umask(0)  # even a permissive umask: the file is created 0600, never loosened
    try:
        token, generated = ensure_api_token(data)
    finally:
        os.umask(old)
    path = token_path(data)
    assert generated and path == data / "api-token"
    assert _mode(path) == 0o600
    assert len(token) >= 40 and re.fullmatch(r"[A-Za-z0-9_-]+", token)  # secrets.token_urlsafe(32)
    assert path.read_text().strip() == token
    again, generated_again = ensure_api_token(data)  # the worker restarts
    assert (again, generated_again) == (token, False)
    assert read_api_token(data) == token  # what the CLI sends
    assert ensure_api_token(tmp_path / "other")[0] != token  # random per data dir


def test_a_configured_token_wins_and_writes_no_file(tmp_path: Path) -> None:
    assert ensure_api_token(tmp_path, "configured-token-0123456789") == ("configured-token-0123456789", False)
    assert not token_path(tmp_path).exists()
    assert read_api_token(tmp_path, "configured-token-0123456789") == "configured-token-0123456789"
    assert read_api_token(tmp_path) is None


def test_an_existing_file_is_never_replaced_and_must_be_private(tmp_path: Path) -> None:
    path = token_path(tmp_path)
    path.write_text("")
    path.chmod(0o600)
    with pytest.raises(ApiTokenError, match="empty"):
        ensure_api_token(tmp_path)
    path.write_text("someone-elses-token-0123456789\n")
    path.chmod(0o644)
    with pytest.raises(ApiTokenError, match="readable by other users"):
        ensure_api_token(tmp_path)
    path.chmod(0o600)
    assert ensure_api_token(tmp_path) == ("someone-elses-token-0123456789", False)


def test_the_token_comes_from_the_environment_and_is_never_shown(tmp_path: Path) -> None:
    assert "BUDGETWARDEN_API_TOKEN" in ENV_VARS
    env = Environment.read({"BUDGETWARDEN_API_TOKEN": " a-long-enough-token-123 "})
    assert env.api_token == "a-long-enough-token-123"
    settings = WorkerSettings.from_env(env, data_dir=tmp_path)
    assert settings.api_token == "a-long-enough-token-123"
    assert "a-long-enough-token" not in repr(env) + repr(settings) + str(settings.describe())
    assert Environment.read({}).api_token is None
    for weak in ("short", "has a space in it 0123456789"):
        with pytest.raises(ConfigError, match="BUDGETWARDEN_API_TOKEN"):
            Environment.read({"BUDGETWARDEN_API_TOKEN": weak})


def test_allowed_hosts_are_the_bind_address_and_loopback_names_with_the_port() -> None:
    assert allowed_hosts("127.0.0.1", 8088) == {"127.0.0.1:8088", "localhost:8088", "[::1]:8088"}
    assert allowed_hosts("0.0.0.0", 8088) == {"0.0.0.0:8088", "127.0.0.1:8088", "localhost:8088", "[::1]:8088"}
    assert "[::]:9000" in allowed_hosts("::", 9000)
    assert "localhost" in allowed_hosts("127.0.0.1", 80)  # a browser leaves out :80


def test_compose_requires_every_secret_from_the_environment() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    for var in ("BUDGETWARDEN_API_TOKEN", "BUDGETWARDEN_CONTROL_KEY", "CLICKHOUSE_PASSWORD", "GRAFANA_PASSWORD"):
        uses = re.findall(r"\$\{" + var + r"([^}]*)\}", text)
        assert uses, var
        assert all(use.startswith(":?") for use in uses), f"{var} must be required (${{{var}:?...}}), not defaulted"
    assert "admin/admin" not in text and "change-me" not in text
    worker = services["worker"]["environment"]
    assert worker["BUDGETWARDEN_API_TOKEN"].startswith("${BUDGETWARDEN_API_TOKEN:?")
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_PASSWORD:?")
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"
