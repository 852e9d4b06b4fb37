"""HMAC-SHA256 signatures on control commands, so agents obey only the processor.

The signed body is the command as JSON with sorted keys, no whitespace and without
`sig`: any language can rebuild it byte for byte.
"""
from __future__ import annotations

import hashlib
import hmac

import msgspec

from schemas.contract import ControlCommand

_sorted_encoder = msgspec.json.Encoder(order="sorted")


def canonical_body(cmd: ControlCommand) -> bytes:
    body = msgspec.to_builtins(cmd)
    body.pop("sig", None)
    return _sorted_encoder.encode(body)


def sign(cmd: ControlCommand, key: bytes) -> ControlCommand:
    digest = hmac.new(key, canonical_body(cmd), hashlib.sha256).hexdigest()
    return msgspec.structs.replace(cmd, sig=digest)


SIG_LEN = 64  # hex digits of an HMAC-SHA256


def verify(cmd: ControlCommand, key: bytes) -> bool:
    """Whether `cmd.sig` is the key's signature of `cmd`. Never raises: a signature that is not
    64 ASCII hex digits, a command or key of the wrong type, all are simply not genuine.

    Bytes are compared, not str: `hmac.compare_digest` raises TypeError on a str holding a
    non-ASCII character, which let one forged command end the agent's control subscriber."""
    try:
        sig = cmd.sig
        if not isinstance(sig, str) or len(sig) != SIG_LEN or not sig.isascii():
            return False
        if isinstance(key, str):
            key = key.encode()
        if not isinstance(key, (bytes, bytearray)):
            return False
        expected = hmac.new(key, canonical_body(cmd), hashlib.sha256).hexdigest().encode("ascii")
        return hmac.compare_digest(expected, sig.encode("ascii"))
    except Exception:  # noqa: BLE001 - whatever the input, the answer is "not genuine"
        return False
