"""What both example agents share: command-line options, a fake ticket queue, a prompt hash."""
from __future__ import annotations

import argparse
import hashlib
import random

from streams.settings import Environment

TICKETS = [
    "My invoice for March shows a duplicate charge of $49.",
    "How do I rotate the API key for our staging project?",
    "The export job has been stuck at 99% since yesterday.",
    "Can you upgrade our plan to the team tier and prorate it?",
    "Webhook deliveries fail with a 410 after we changed domains.",
]


def parse_args(agent_id: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="An example agent instrumented with budgetwarden (fake LLM).")
    parser.add_argument("--bootstrap", default=Environment.read().bootstrap)
    parser.add_argument("--agent-id", default=agent_id)
    parser.add_argument("--user-id", default="u-42")
    parser.add_argument("--tickets", type=int, default=5, help="tasks to run")
    parser.add_argument("--steps", type=int, default=4, help="model calls per task")
    parser.add_argument("--loop", action="store_true", help="misbehave: repeat the same prompt forever (to be killed)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    random.seed(args.seed)
    return args


def prompt_hash(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(repr(messages).encode()).hexdigest()[:16]
