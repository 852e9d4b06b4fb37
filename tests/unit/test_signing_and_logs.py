"""Control signatures and secret-free logs."""
from __future__ import annotations

import msgspec
import structlog
from structlog.testing import capture_logs

from streams.kafka import KafkaSecurity, describe
from streams.settings import Environment
from schemas.redact import MASK, redact_secrets
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
