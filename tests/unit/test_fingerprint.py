"""Client fingerprints of the newest turn: normalization, tool calls, results, SimHash, and the
fields `record_*` sends (only hashes; no content leaves the agent)."""
from __future__ import annotations

import json
from pathlib import Path

from schemas.codec import UsageDecoder, encode
from streams.client import BudgetClient, SyncBudgetClient, fingerprint
from streams.client.fingerprint import hamming, normalize_text, simhash
from streams.client.testing import FakeSender
from streams.kafka import KafkaSecurity

SYSTEM = {"role": "system", "content": "You are a support agent."}


def _tool_turn(result: str, *, args: dict | None = None, call_id: str = "call_1") -> list[dict]:
    """An OpenAI chat conversation whose newest turn is one tool result."""
    return [SYSTEM, {"role": "user", "content": "Where is my order?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": "lookup_order", "arguments": json.dumps(args or {"order": "A-1"})}}]},
            {"role": "tool", "tool_call_id": call_id, "content": result}]


def test_normalize_masks_timestamps_uuids_hex_ids_numbers_and_collapses_whitespace() -> None:
    text = "At 2026-12-05T10:08:58.123Z  req 3f2b9c1e-8d4a-4b6f-9e21-0a7c5d3e1f90 sha 9f86d081884c7d65\n\tgot 42 items (3.5s)"
    assert normalize_text(text) == "At <ts> req <uuid> sha <hex> got # items (#s)"
    assert normalize_text("deadbeef is a word, cafe too") == "deadbeef is a word, cafe too"  # hex ids need a digit


def test_turns_differing_only_by_timestamp_uuid_or_number_hash_equal() -> None:
    a = fingerprint(_tool_turn("Order A-1 status pending at 2026-12-05T10:00:00Z, request 3f2b9c1e-8d4a-4b6f-9e21-0a7c5d3e1f90, retry in 30s"))
    b = fingerprint(_tool_turn("Order A-1 status pending at 2026-12-05 10:05:17+01:00, request 0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9, "
                               "retry   in 45s", call_id="call_9"))
    assert a.turn_hash and a.turn_hash == b.turn_hash
    assert a.result_hash and a.result_hash == b.result_hash
    assert a.simhash == b.simhash
    assert a.tool_hash and a.tool_hash == b.tool_hash  # the call id is not part of the call
    c = fingerprint(_tool_turn("Order A-1 shipped: tracking number on its way"))
    assert c.turn_hash != a.turn_hash and c.result_hash != a.result_hash
    assert len(a.turn_hash) == 16 and int(a.turn_hash, 16) >= 0  # blake2b, 8 bytes, hex


def test_result_normalization_keeps_numbers_and_masks_only_ids_and_clocks() -> None:
    text = ("job-1 at 2026-12-05T10:08:58Z (req 3f2b9c1e-8d4a-4b6f-9e21-0a7c5d3e1f90, sha 9f86d081884c7d65): "
            "running, 45% done,  3 of 7 parts, 1.5 GB, 12 rows/s, 340 s elapsed, ETA 2 min, checked 10:08:58")
    assert normalize_text(text, keep_numbers=True) == (
        "job-1 at <ts> (req <uuid>, sha <hex>): running, 45% done, 3 of 7 parts, 1.5 GB, 12 rows/s, "
        "<dur> elapsed, ETA <dur>, checked <ts>")
    assert normalize_text("3 results, page 2, 5 hosts, v4.2, 30ms, 2h, 7 days", keep_numbers=True) == (
        "3 results, page 2, 5 hosts, v4.2, <dur>, <dur>, <dur>")


def test_result_hash_keeps_progress_numbers_that_turn_hash_masks() -> None:
    """A job polled until done (45%, then 52%) is progress; one whose answer moves only by its
    clock (elapsed time, request id, timestamp) is not."""
    a = fingerprint(_tool_turn("export: running, 45% done, 120 s elapsed (req 3f2b9c1e-8d4a-4b6f-9e21-0a7c5d3e1f90)"))
    moved = fingerprint(_tool_turn("export: running, 52% done, 150 s elapsed (req 0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9)"))
    ticked = fingerprint(_tool_turn("export: running, 45% done, 180 s elapsed (req 0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9)"))
    assert a.turn_hash == moved.turn_hash == ticked.turn_hash  # the turn masks every number
    assert a.result_hash != moved.result_hash
    assert a.result_hash == ticked.result_hash


def test_result_hash_carries_the_producing_call_with_its_counters_masked() -> None:
    """The same answer to a poll whose arguments change only in a counter or a time is no
    progress; the same acknowledgement of writes to other files is."""
    def poll(args: dict) -> str:
        return fingerprint(_tool_turn("job-7: queued, position 4", args=args)).result_hash
    assert poll({"job": "job-7", "attempt": 1}) == poll({"job": "job-7", "attempt": 2})
    assert poll({"job": "job-7", "since": "2026-12-05T10:00:00Z"}) == poll({"job": "job-7", "since": "2026-12-05T10:05:00Z"})
    assert poll({"job": "job-7"}) != poll({"job": "job-8"})  # digits in a string stay
    assert poll({"job": "job-7", "attempt": 1}) != poll({"job": "job-7"})  # other arguments
    assert poll({"job": "job-7", "wait": 1.5, "verbose": True}) == poll({"job": "job-7", "wait": 30, "verbose": True})
    assert poll({"job": "job-7", "wait": 1.5, "verbose": True}) != poll({"job": "job-7", "wait": 1.5, "verbose": False})
    anthropic = [{"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup_order",
                                                    "input": {"attempt": 9, "job": "job-7"}}]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                               "content": "job-7: queued, position 4"}]}]
    assert fingerprint(anthropic).result_hash == poll({"job": "job-7", "attempt": 1})  # an object, or a JSON string
    assert fingerprint(_tool_turn("ok", args={"path": "chapter_1.md"})).result_hash != fingerprint(
        _tool_turn("ok", args={"path": "chapter_2.md"})).result_hash
    # tool_hash stays exact: the calls differ
    assert fingerprint([], [{"name": "p", "arguments": {"attempt": 1}}]).tool_hash != fingerprint(
        [], [{"name": "p", "arguments": {"attempt": 2}}]).tool_hash


def test_only_the_newest_turn_counts_so_a_growing_prompt_keeps_its_fingerprint() -> None:
    history = _tool_turn("Order A-1 status pending")
    grown = history + [{"role": "assistant", "content": "Checking again."}, {"role": "tool", "content": "Order A-1 status pending"}]
    assert fingerprint(history).turn_hash == fingerprint(grown).turn_hash


def test_tool_hash_is_name_plus_canonical_arguments_in_every_provider_shape() -> None:
    openai = fingerprint([], tool_calls=[{"id": "x", "type": "function",
                                          "function": {"name": "search", "arguments": '{"q": "refund", "page": 2}'}}])
    anthropic = fingerprint([], tool_calls=[{"type": "tool_use", "id": "toolu_1", "name": "search",
                                             "input": {"page": 2, "q": "refund"}}])
    gemini = fingerprint([], tool_calls=[{"functionCall": {"name": "search", "args": {"q": "refund", "page": 2}}}])
    assert openai.tool_hash and openai.tool_hash == anthropic.tool_hash == gemini.tool_hash
    assert fingerprint([], tool_calls=[{"name": "search", "arguments": {"q": "refund", "page": 3}}]).tool_hash != openai.tool_hash
    assert fingerprint([], tool_calls=[{"name": "browse", "arguments": {"q": "refund", "page": 2}}]).tool_hash != openai.tool_hash
    # without tool_calls: the calls of the assistant message whose results are the newest turn
    assert fingerprint(_tool_turn("x", args={"order": "A-1"})).tool_hash == fingerprint(
        [], tool_calls=[{"name": "lookup_order", "arguments": {"order": "A-1"}}]).tool_hash


def test_anthropic_and_gemini_tool_results_are_results() -> None:
    anthropic = [{"role": "user", "content": "hi"},
                 {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "ls", "input": {}}]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a.txt b.txt"}]}]
    gemini = [{"role": "user", "parts": [{"text": "hi"}]},
              {"role": "model", "parts": [{"functionCall": {"name": "ls", "args": {}}}]},
              {"role": "user", "parts": [{"functionResponse": {"name": "ls", "response": {"files": ["a.txt"]}}}]}]
    a, g = fingerprint(anthropic), fingerprint(gemini)
    assert a.result_hash and g.result_hash and a.tool_hash == g.tool_hash
    assert fingerprint([{"role": "user", "content": "just a question"}]).result_hash == ""


def test_simhash_of_near_identical_texts_is_within_3_bits_and_of_unrelated_texts_far() -> None:
    """One word changed in a turn of ~60 words. (SimHash gets noisier as turns get shorter: a
    one-word change in a 30-word turn moves it 3-6 bits; exact repeats are turn_hash's job.)"""
    base = ("Searching the knowledge base for the customer's refund policy. The previous search returned no "
            "matching articles, so I will try again with the same query and check the results carefully. "
            "If nothing turns up this time I will look at the order history, the shipping status and the "
            "payment records for order 1182 before writing a reply to the customer about the refund.")
    near = [base.replace("carefully", "closely"), base + " Thanks.", base.replace("the same query", "the identical query"),
            base.replace("refund policy", "return policy"), base.replace("writing", "sending")]
    unrelated = ["The weather in Paris is sunny with light winds and a high of twenty degrees today.",
                 "def main():\n    print('hello world')\n\nif __name__ == '__main__':\n    main()",
                 '{"results": [], "status": "ok", "next_page": null}']
    s = simhash(base)
    assert s is not None and 0 <= s < 1 << 64
    assert all(hamming(s, simhash(t)) <= 3 for t in near)  # type: ignore[arg-type]
    assert all(hamming(s, simhash(t)) > 12 for t in unrelated)  # type: ignore[arg-type]
    fp = fingerprint([{"role": "user", "content": base}])
    assert fp.simhash == str(s)  # a decimal string on the wire
    assert fingerprint([{"role": "user", "content": "  "}]).simhash == ""


def _client(tmp_path: Path) -> BudgetClient:
    return BudgetClient("unused:9092", "bot", follow_control=False, spill_dir=tmp_path / "spill",
                        sender=FakeSender(), kafka=KafkaSecurity())


async def test_record_sends_the_fingerprints_and_no_content(tmp_path: Path) -> None:
    bw = _client(tmp_path)
    messages = _tool_turn("secret customer data: card 4111 1111 1111 1111")
    calls = [{"name": "refund", "arguments": {"order": "A-1"}}]
    async with bw.task("t"):
        ev = await bw.record_openai({"prompt_tokens": 10, "completion_tokens": 2}, model="gpt-4o",
                                    messages=messages, tool_calls=calls, prompt_hash="p")
        plain = await bw.record_anthropic({"input_tokens": 1, "output_tokens": 1}, model="claude-3-5-sonnet")
    fp = fingerprint(messages, calls)
    assert (ev.turn_hash, ev.tool_hash, ev.result_hash, ev.simhash, ev.prompt_hash) == (
        fp.turn_hash, fp.tool_hash, fp.result_hash, fp.simhash, "p")
    wire = encode(ev)
    assert b"secret" not in wire and b"refund" not in wire and b"A-1" not in wire
    assert UsageDecoder().decode(wire)[0] == ev  # the contract accepts them
    assert (plain.turn_hash, plain.simhash) == ("", "")  # optional: omitted without messages


def test_sync_client_and_explicit_fingerprints(tmp_path: Path) -> None:
    with SyncBudgetClient(bootstrap="unused:9092", agent_id="bot", follow_control=False, spill_dir=tmp_path / "spill",
                          sender=FakeSender(), kafka=KafkaSecurity()) as bw:
        ev = bw.record_gemini({"promptTokenCount": 3, "candidatesTokenCount": 1}, model="gemini-2.5-pro",
                              messages=[{"role": "user", "parts": [{"text": "hello"}]}], tool_hash="abc", simhash=7)
    assert ev.turn_hash == fingerprint([{"role": "user", "parts": [{"text": "hello"}]}]).turn_hash
    assert (ev.tool_hash, ev.simhash) == ("abc", "7")  # explicit values win


def test_an_unreadable_message_never_fails_the_call(tmp_path: Path) -> None:
    class Weird:
        def model_dump(self) -> dict:
            raise RuntimeError("no")

    fp = fingerprint([Weird(), {"role": "user", "content": ["a", 3, None, {"text": "b"}]}])
    assert fp.turn_hash
