"""The granting service: `streams.admission.Ledger` on Kafka, run by the worker beside the state keeper.

- Spend: it reads every partition of `usage.events` itself (no consumer group), from the
  start of the longest period an admitted limit has (day, week or month, by the broker's
  time index), and counts each event, in tokens and priced in nano-USD, against its agent,
  user, team and the fleet; events stamped with a holder settle that holder's lease.
- Prices: the packaged catalog (or `BUDGETWARDEN_PRICES`'s, as the processor) with the
  versions published on `budget.prices` folded in, followed (`streams.prices.follow_prices`),
  so a call is charged here what the processor charges it. Redelivered events are counted again
  (at-least-once): that only makes it grant less.
- Limits: the rules file with the live policies of `budget.policies` folded in, followed.
- Requests: `admission.requests` has one partition, read in a consumer group, so one service
  answers at a time. Answers go to `admission.grants`, keyed by agent id; a request that does
  not decode goes to `usage.deadletter` with its field and reason. It answers only
  once the usage that existed at start has been read, and after taking the requests'
  partition it grants nothing for a lease's life plus the settle grace (`Ledger.quiet`): a
  service that held it before may have leases still open. Requests are not committed
  offsets worth keeping: a restarted service starts at the newest (clients ask again).
"""
from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from schemas.calendar import Calendar
from schemas.clock import Clock, system_ms
from schemas.codec import UsageDecoder, decode_admission_request, decode_policy, encode
from schemas.contract import Policy
from schemas.errors import BadInput
from schemas.pricing import PriceCatalog
from schemas.topics import Topics
from streams.admission import PERIOD_LIMITS, Ledger
from streams.engine import dead_letter
from streams.kafka import KafkaSecurity, read_compacted
from streams.policies import fold
from streams.prices import PriceBook, follow_prices
from streams.rules_config import RulesConfig

log = structlog.get_logger(__name__)

GROUP_ID = "budgetwarden-admission"


def replay_start(config: RulesConfig, now_ms: int) -> int:
    """Where spend must be read from: the start of the longest period any admitted limit has."""
    b = config.budgets
    entries = [b.global_, b.default_agent, *b.agents.values(), *b.users.values(), *b.teams.values()]
    periods = [p for names in PERIOD_LIMITS.values() for p, name in names.items()
               if any(getattr(e, name) is not None for e in entries)]
    longest = "month" if "month" in periods else "week" if "week" in periods else "day"
    return Calendar(config.tz()).bounds(longest, now_ms)[0]


class AdmissionService:
    def __init__(self, bootstrap: str, config: RulesConfig, topics: Topics = Topics(),
                 security: KafkaSecurity = KafkaSecurity(), group_id: str = GROUP_ID, now_ms: Clock = system_ms,
                 catalog: PriceCatalog | None = None, **ledger_options: Any) -> None:
        self.bootstrap = bootstrap
        self.base = config
        self.topics = topics
        self.security = security
        self.group_id = group_id
        self.now_ms = now_ms
        self.prices = PriceBook(catalog or PriceCatalog.default())
        self.ledger = Ledger(config, now_ms, catalog=self.prices.catalog, **ledger_options)
        self.caught_up = asyncio.Event()
        self.stats = {"usage": 0, "requests": 0, "bad": 0}
        self._policies: dict[str, Policy] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._clients: list[Any] = []

    async def start(self) -> None:
        """Made here, not in __init__: aiokafka clients belong to the running loop."""
        options = self.security.client_options()
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=1, **options)
        self._usage = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                       auto_offset_reset="earliest", fetch_max_wait_ms=50, **options)
        self._requests = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group_id,
                                          auto_offset_reset="latest", fetch_max_wait_ms=20, **options)
        for client in (self._producer, self._usage, self._requests):
            await client.start()
            self._clients.append(client)
        self._tasks = [asyncio.create_task(self._follow_usage(), name="admission-usage"),
                       asyncio.create_task(self._follow_policies(), name="admission-policies"),
                       asyncio.create_task(self._follow_prices(), name="admission-prices"),
                       asyncio.create_task(self._answer(), name="admission-requests")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in reversed(self._clients):
            await client.stop()

    # spend ------------------------------------------------------------------------------------
    async def _seek_usage(self) -> tuple[dict[TopicPartition, int], set[TopicPartition]]:
        """Assign every partition of `usage.events` at the start of the longest limited period;
        returns the end offsets then and the partitions with records before them."""
        cluster = await self._usage._client.fetch_all_metadata()  # as streams.kafka.read_compacted
        parts = [TopicPartition(self.topics.usage, p) for p in sorted(cluster.partitions_for_topic(self.topics.usage) or ())]
        self._usage.assign(parts)
        start = replay_start(self.ledger.config, self.now_ms())
        found = await self._usage.offsets_for_times({tp: start for tp in parts})
        for tp in parts:
            if found.get(tp) is not None:
                self._usage.seek(tp, found[tp].offset)
            else:
                await self._usage.seek_to_end(tp)
        end = await self._usage.end_offsets(parts)
        return end, {tp for tp in parts if await self._usage.position(tp) < end[tp]}

    async def _follow_usage(self) -> None:
        while True:
            try:
                end, pending = await self._seek_usage()
                break
            except Exception as err:  # noqa: BLE001 - nothing read yet: try again (it answers nobody meanwhile)
                log.error("admission.usage_error", error=repr(err))
                await asyncio.sleep(1.0)
        decoder = UsageDecoder(self.now_ms)
        while True:
            if not pending:
                self.caught_up.set()
            try:
                batch = await self._usage.getmany(timeout_ms=200, max_records=5_000)
            except Exception as err:  # noqa: BLE001 - a broker hiccup: the consumer resumes where it was
                log.error("admission.usage_error", error=repr(err))
                await asyncio.sleep(1.0)
                continue
            for tp, records in batch.items():
                events, _, bad = decoder.decode_each([r.value for r in records])
                self.stats["bad"] += len(bad)
                for e in events:
                    self.ledger.count(e)
                self.stats["usage"] += len(events)
                if tp in pending and records[-1].offset + 1 >= end[tp]:
                    pending.discard(tp)

    async def _follow_policies(self) -> None:
        def keep(key: bytes | None, value: bytes | None) -> None:
            name = key.decode("utf-8", "replace") if key is not None else ""
            if value is None:
                self._policies.pop(name, None)
            else:
                try:
                    self._policies[name] = decode_policy(value)
                except BadInput as err:
                    log.warning("admission.policy_refused", field=err.field, reason=err.reason)
                    return
            self.ledger.set_config(fold(self.base, list(self._policies.values())))

        while True:
            try:
                await read_compacted(self.bootstrap, self.topics.policies, keep, security=self.security, follow=True)
            except Exception as err:  # noqa: BLE001 - read the topic again: it is compacted, the fold is the same
                log.error("admission.policies_error", error=repr(err))
                await asyncio.sleep(1.0)

    async def _follow_prices(self) -> None:
        def use(catalog: PriceCatalog) -> None:
            self.ledger.catalog = catalog

        while True:
            try:
                await follow_prices(self.prices, self.bootstrap, self.topics.prices, use, security=self.security)
            except Exception as err:  # noqa: BLE001 - read the topic again: it is compacted, the merge is the same
                log.error("admission.prices_error", error=repr(err))
                await asyncio.sleep(1.0)

    # grants -----------------------------------------------------------------------------------
    async def _answer(self) -> None:
        await self.caught_up.wait()
        self._requests.subscribe([self.topics.admission_requests], listener=_Quiet(self.ledger))
        while True:
            try:
                batch = await self._requests.getmany(timeout_ms=200, max_records=1_000)
                for records in batch.values():
                    for record in records:
                        bad = await self.answer(record.value)
                        if bad is not None:  # hostile input: a dead letter naming field and reason
                            letter = dead_letter(record, bad, self.now_ms())
                            await self._producer.send(self.topics.deadletter, encode(letter), key=record.key)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - a broker hiccup: clients ask again
                log.error("admission.error", error=repr(err))
                await asyncio.sleep(1.0)

    async def answer(self, raw: bytes | None) -> BadInput | None:
        """Grant one request and publish the answer; a bad request is answered by nothing (returned)."""
        try:
            req = decode_admission_request(raw)
        except BadInput as err:
            self.stats["bad"] += 1
            log.warning("admission.request_refused", field=err.field, reason=err.reason)
            return err
        self.stats["requests"] += 1
        grant = self.ledger.answer(req)
        await self._producer.send(self.topics.admission_grants, encode(grant), key=req.agent_id.encode())
        return None


class _Quiet(ConsumerRebalanceListener):
    """Taking the requests' partition: another service's leases may be open, grant nothing for a while."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if assigned:
            self.ledger.quiet()
