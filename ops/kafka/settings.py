"""Kafka client security settings from the environment (SASL/SSL), shared by every client.

Values are passed to aiokafka/Faust and never logged: `describe()` shows which settings
are set without their values.
"""
from __future__ import annotations

import os
import ssl
from typing import Any

ENV_KEYS = {
    "KAFKA_SECURITY_PROTOCOL": "security_protocol",
    "KAFKA_SASL_MECHANISM": "sasl_mechanism",
    "KAFKA_SASL_USERNAME": "sasl_plain_username",
    "KAFKA_SASL_PASSWORD": "sasl_plain_password",
}


def client_options_from_env(env: dict[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ) if env is None else env
    options: dict[str, Any] = {opt: env[key] for key, opt in ENV_KEYS.items() if env.get(key)}
    if "SSL" in options.get("security_protocol", ""):
        context = ssl.create_default_context(cafile=env.get("KAFKA_SSL_CAFILE") or None)
        if env.get("KAFKA_SSL_CERTFILE"):
            context.load_cert_chain(env["KAFKA_SSL_CERTFILE"], env.get("KAFKA_SSL_KEYFILE") or None)
        options["ssl_context"] = context
    return options


def describe(options: dict[str, Any]) -> dict[str, str]:
    """What is configured, safe to log."""
    return {k: ("set" if k in {"sasl_plain_password", "ssl_context"} else str(v)) for k, v in options.items()}


def faust_credentials(options: dict[str, Any]) -> Any:
    """The same settings as Faust `broker_credentials` (None for PLAINTEXT)."""
    import faust

    protocol = options.get("security_protocol", "PLAINTEXT")
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=options.get("sasl_plain_username"), password=options.get("sasl_plain_password"),
            ssl_context=options.get("ssl_context"), mechanism=options.get("sasl_mechanism"),
        )
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return None
