"""Seeded model calls with provider-shaped usage objects, so the client's normalizers run for real."""
from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ops.fleet.profiles import AgentProfile


@dataclass(frozen=True)
class SimCall:
    agent_id: str
    task_id: str
    step: int
    model: str
    provider: str
    usage: dict[str, Any]  # as the provider's API returns it
    prompt_hash: str
    tool: str
    estimated_tokens: int
    user_id: str
    team: str


def _lognormal(rng: random.Random, median: int, sigma: float = 0.5) -> int:
    return max(1, int(rng.lognormvariate(math.log(median), sigma)))


def usage_object(provider: str, uncached: int, cached: int, cache_write: int, output: int) -> dict[str, Any]:
    """The usage object each API returns for these canonical buckets (inverse of schemas.normalize)."""
    if provider == "openai":
        return {"prompt_tokens": uncached + cached, "completion_tokens": output,
                "total_tokens": uncached + cached + output, "prompt_tokens_details": {"cached_tokens": cached}}
    if provider == "anthropic":
        return {"input_tokens": uncached, "output_tokens": output, "cache_read_input_tokens": cached,
                "cache_creation_input_tokens": cache_write}
    return {"promptTokenCount": uncached + cached, "candidatesTokenCount": output,
            "cachedContentTokenCount": cached, "totalTokenCount": uncached + cached + output}


def task_calls(profile: AgentProfile, rng: random.Random, task_no: int, spike: bool = False,
               run: str = "") -> Iterator[SimCall]:
    """The calls of one task. A looping agent repeats one prompt; a spiking one sends 8x prompts.
    `run` goes into the task id: a second run against the same stack must not reuse the ids its
    kills (kept in agent.state) name."""
    task_id = f"{profile.agent_id}-{run + '-' if run else ''}t{task_no:05d}"
    lo, hi = profile.steps_per_task
    steps = rng.randint(lo, hi)
    model = rng.choice(profile.models)
    user = rng.choice(profile.users)
    scale = 8 if spike else 1
    prompt_size = _lognormal(rng, profile.input_median * scale)
    estimate = int(steps * (profile.input_median + profile.output_median) * scale * profile.estimate_factor)
    loop_hash = hashlib.sha1(f"{task_id}:loop".encode()).hexdigest()[:16]
    for step in range(steps):
        prompt = prompt_size + step * _lognormal(rng, max(50, profile.output_median // 2))  # context grows per step
        warm = step > 0 and profile.cache_hit_rate > 0
        cached = int(prompt * profile.cache_hit_rate) if warm else 0
        cache_write = int(prompt * 0.5) if (not warm and profile.cache_hit_rate > 0 and profile.provider == "anthropic") else 0
        uncached = prompt - cached - cache_write
        output = _lognormal(rng, profile.output_median * scale)
        if profile.behaviour == "loop":
            prompt_hash = loop_hash
        else:
            prompt_hash = hashlib.sha1(f"{task_id}:{step}:{rng.random()}".encode()).hexdigest()[:16]
        yield SimCall(
            agent_id=profile.agent_id, task_id=task_id, step=step, model=model, provider=profile.provider,
            usage=usage_object(profile.provider, uncached, cached, cache_write, output),
            prompt_hash=prompt_hash, tool=rng.choice(profile.tools), estimated_tokens=estimate,
            user_id=user, team=profile.team,
        )
