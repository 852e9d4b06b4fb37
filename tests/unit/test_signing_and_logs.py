"""Control signatures and secret-free logs."""
from __future__ import annotations

import msgspec
import pytest
import structlog
from structlog.testing import capture_logs

from streams.kafka import KafkaSecurity, describe
from streams.settings import Environment, WorkerSettings
from schemas.redact import MASK, redact_secrets, redact_value
from schemas.contract import ControlCommand
from schemas.signing import canonical_body, sign, verify

KEY = b"k" * 32
CMD = ControlCommand(command="kill_task", agent_id="a", task_id="t", reason="loop", decision_id="d", ts_ms=1_767_225_600_000)


def test_signed_command_verifies_and_tampering_breaks_it() -> None:
    signed = sign(CMD, KEY)
    assert len(signed.sig) == 64 and verify(signed, KEY)
    assert not verify(CMD, KEY)  # unsigned
    assert not verify(signed, b"other-key")
    assert not verify(msgspec.structs.replace(signed, task_id="other-task"), KEY)


def test_canonical_body_is_sorted_compact_and_excludes_sig() -> None:
    body = canonical_body(sign(CMD, KEY))
    assert b'"sig"' not in body and b" " not in body
    keys = list(msgspec.json.decode(body))
    assert keys == sorted(keys)


def test_secrets_are_masked_in_structured_logs() -> None:
    log = structlog.get_logger("t")
    with capture_logs(processors=[redact_secrets]) as logs:
        log.info(
            "connect", sasl_plain_password="hunter2", control_key="abc", clickhouse_url="https://bob:pa55@ch:8443/db",
            options={"api_key": "sk-123", "bootstrap": "h:9092"}, input_tokens=5,
        )
    entry = logs[0]
    flat = repr(entry)
    for secret in ("hunter2", "abc", "pa55", "sk-123"):
        assert secret not in flat
    assert entry["sasl_plain_password"] == MASK
    assert entry["clickhouse_url"] == f"https://bob:{MASK}@ch:8443/db"
    assert entry["options"]["bootstrap"] == "h:9092"
    assert entry["input_tokens"] == 5  # token *counts* are not secrets


def test_kafka_security_settings_come_from_env_and_describe_hides_password() -> None:
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN",
           "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": "s3cret"}
    options = Environment.read(env).kafka.client_options()
    assert options == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                       "sasl_plain_username": "svc", "sasl_plain_password": "s3cret"}
    assert "s3cret" not in repr(describe(options))
    assert Environment.read({}).kafka.client_options() == {}


def test_faust_gets_the_same_sasl_settings() -> None:
    creds = Environment.read({
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": "s3cret"}).kafka.faust_credentials()
    assert (creds.username, creds.password, creds.mechanism.value) == ("svc", "s3cret", "SCRAM-SHA-256")
    assert "s3cret" not in repr(creds)
    assert KafkaSecurity().faust_credentials() is None


# issue 16: passwords with / or @, query-string secrets, URLs without a user, tracebacks, reprs ---------
@pytest.mark.parametrize(("raw", "masked"), [
    ("https://bob:pa/ss@word@ch:8443/db", f"https://bob:{MASK}@ch:8443/db"),
    ("kafka://svc:p@ss@broker:9092", f"kafka://svc:{MASK}@broker:9092"),
    ("redis://:hunter2@cache:6379/0", f"redis://:{MASK}@cache:6379/0"),
    ("redis://:pa/ss@word@cache", f"redis://:{MASK}@cache"),
    ("http://u:pa?ss@host/x", f"http://u:{MASK}@host/x"),
    ("http://u:1234/5@host/x", f"http://u:{MASK}@host/x"),
    ("https://h/db?user=bob&password=hunter2&x=1", f"https://h/db?user=bob&password={MASK}&x=1"),
    ("https://h/db?password=hunter2", f"https://h/db?password={MASK}"),
    ("https://h/?a=1&token=sk-123#frag", f"https://h/?a=1&token={MASK}#frag"),
    ("https://h/?key=abc&access_token=def&client_secret=ghi", f"https://h/?key={MASK}&access_token={MASK}&client_secret={MASK}"),
    ("https://h/?secret=abc", f"https://h/?secret={MASK}"),
    ("https://h/?X-Amz-Signature=abc&Api_Key=def", f"https://h/?X-Amz-Signature={MASK}&Api_Key={MASK}"),
    ("dsn host=db password=hunter2 dbname=x", f"dsn host=db password={MASK} dbname=x"),
    ("see https://bob:s3cret@a/x and https://:t0ken@b/y", f"see https://bob:{MASK}@a/x and https://:{MASK}@b/y"),
])
def test_credentials_in_urls_and_query_strings_are_masked(raw: str, masked: str) -> None:
    assert redact_value(raw) == masked


@pytest.mark.parametrize("text", [
    "http://localhost:8123/db", "http://h:8080/users?mail=a@b.com", "http://[::1]:8080/x?mail=a@b.com", "https://h/path?x=1&y=2",
    "input_tokens=5 output_tokens=7 max_tokens=10", "monkey=1 keyspace=2", "kafka:9092", "user@example.com",
])
def test_text_without_secrets_is_left_alone(text: str) -> None:
    assert redact_value(text) == text


def test_a_url_with_an_at_in_its_query_keeps_the_password_masked_and_the_host() -> None:
    out = redact_value("https://bob:pa/ss@word@ch:8443/db?notify=ops@example.com")
    assert "pa/ss" not in out and "word" not in out and out.startswith(f"https://bob:{MASK}@ch:8443/db?")


def test_log_setup_redacts_the_formatted_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from ops import logsetup

    monkeypatch.setattr(logsetup.logging, "basicConfig", lambda **_: None)  # no handlers left behind
    saved = structlog.get_config()
    try:
        logsetup.configure(json_lines=True)
        processors = structlog.get_config()["processors"]
    finally:
        structlog.configure(**saved)
    try:
        raise ConnectionError("cannot reach https://bob:pa/ss@w0rd@ch:8443/db?password=hunter2")
    except ConnectionError as err:
        event: object = {"event": "sink.down", "exc_info": (type(err), err, err.__traceback__)}
    for processor in processors:
        event = processor(None, "error", event)  # type: ignore[arg-type]
    assert isinstance(event, str) and "Traceback" in event and "ConnectionError" in event
    for secret in ("pa/ss", "w0rd", "hunter2"):
        assert secret not in event


def test_settings_reprs_and_descriptions_show_no_secret() -> None:
    url = "https://bob:pa/ss@w0rd@ch:8443/db?password=hunter2"
    env = Environment.read({"CLICKHOUSE_URL": url, "BUDGETWARDEN_CONTROL_KEY": "ctl-key-123",
                            "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": "kafka-pw-456"})
    assert env.clickhouse_url == url and env.control_key == b"ctl-key-123"
    settings = WorkerSettings.from_env(env)
    for text in (repr(env), str(env), repr(settings), str(settings), repr(settings.describe()), repr(env.kafka)):
        for secret in ("pa/ss", "w0rd", "hunter2", "ctl-key-123", "kafka-pw-456"):
            assert secret not in text, (secret, text)
    assert settings.describe()["clickhouse"] == f"https://bob:{MASK}@ch:8443/db?password={MASK}"


def test_every_secret_looking_settings_field_is_kept_out_of_reprs() -> None:
    import dataclasses
    import re

    from schemas.redact import SECRET_KEYS

    secretish = re.compile(r"token|url|passw|secret|_key$", re.IGNORECASE)
    for cls in (Environment, WorkerSettings, KafkaSecurity):
        for f in dataclasses.fields(cls):
            if SECRET_KEYS.search(f.name) or secretish.search(f.name):
                assert f.repr is False, f"{cls.__name__}.{f.name} would show in repr()"
