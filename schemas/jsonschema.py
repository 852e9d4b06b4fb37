"""JSON Schema export of contract v1, for agents written in other languages."""
from __future__ import annotations

import json
from pathlib import Path

import msgspec

from schemas.contract import ControlCommand, Decision, DeadLetter, Policy, UsageBatch, UsageEvent

SCHEMA_FILES: dict[str, object] = {
    "usage_event": UsageEvent,
    "usage_batch": UsageBatch,
    "usage_message": UsageEvent | UsageBatch,
    "decision": Decision,
    "control_command": ControlCommand,
    "policy": Policy,
    "dead_letter": DeadLetter,
}


def schema_for(kind: object, title: str) -> dict:
    schema = msgspec.json.schema(kind)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"budgetwarden contract v1: {title}"
    return schema


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, kind in SCHEMA_FILES.items():
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema_for(kind, name), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
