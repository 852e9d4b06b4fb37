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


def verify(cmd: ControlCommand, key: bytes) -> bool:
    if not cmd.sig:
        return False
    expected = hmac.new(key, canonical_body(cmd), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, cmd.sig)
