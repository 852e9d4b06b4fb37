"""`budgetwarden price` / `prices` through typer's CliRunner."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ops.commands import price

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    price.register(app)
    return app


def test_json_keys_and_values() -> None:
    r = runner.invoke(_app(), ["price", "--model", "gpt-4o", "--input", "1000", "--output", "2000",
                               "--cache-read", "3000", "--at", "2025-01-01", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    # 1000*2500 + 2000*10000 + 3000*1250 nano = 26_250_000
    assert out["model"] == "gpt-4o" and out["priced"] is True
    assert out["nano_usd"] == 26_250_000 and out["usd"] == "0.026250000"
    assert out["price_version"] == "gpt-4o@2024-10-02"
    assert (out["input_tokens"], out["output_tokens"], out["cache_read_tokens"],
            out["cache_write_tokens"], out["cache_write_1h_tokens"]) == (1000, 2000, 3000, 0, 0)


def test_cache_write_buckets_and_history_date() -> None:
    r = runner.invoke(_app(), ["price", "--model", "claude-3-5-sonnet-20241022", "--provider", "anthropic",
                               "--cache-write", "1000", "--cache-write-1h", "1000", "--at", "2025-03-01", "--json"])
    out = json.loads(r.stdout)
    # 1000*3750 + 1000*6000
    assert out["nano_usd"] == 9_750_000 and out["model"] == "claude-3-5-sonnet"
    r = runner.invoke(_app(), ["price", "--model", "gpt-4o", "--input", "1000", "--at", "2024-06-01", "--json"])
    assert json.loads(r.stdout)["nano_usd"] == 5_000_000  # launch price $5


def test_unknown_model_is_an_error_not_a_zero_price() -> None:
    r = runner.invoke(_app(), ["price", "--model", "mystery-9000", "--input", "10", "--json"])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("error: model: 'mystery-9000' is not in the price catalog")
    assert "prices list" in r.stderr and len(r.stderr.splitlines()) == 1


def test_a_model_priced_only_later_names_its_first_price_date() -> None:
    r = runner.invoke(_app(), ["price", "--model", "gpt-4o", "--input", "10", "--at", "2020-01-01"])
    assert r.exit_code == 2
    assert "'gpt-4o' has no price on 2020-01-01" in r.stderr and "first price is from 2024-05-13" in r.stderr


def test_usage_json_openai_chat() -> None:
    usage = {"prompt_tokens": 1200, "completion_tokens": 500, "total_tokens": 1700,
             "prompt_tokens_details": {"cached_tokens": 200},
             "completion_tokens_details": {"reasoning_tokens": 100}}
    r = runner.invoke(_app(), ["price", "--model", "gpt-4o-mini", "--provider", "openai",
                               "--usage-json", json.dumps(usage), "--at", "2025-01-01", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["input_tokens"], out["cache_read_tokens"], out["output_tokens"]) == (1000, 200, 500)
    # 1000*150 + 200*75 + 500*600 = 150_000 + 15_000 + 300_000
    assert out["nano_usd"] == 465_000


def test_human_output_has_table() -> None:
    r = runner.invoke(_app(), ["price", "--model", "gpt-4o", "--input", "1000", "--at", "2025-01-01"])
    assert r.exit_code == 0
    assert "input_tokens" in r.stdout and "0.002500000" in r.stdout


@pytest.mark.parametrize(
    ("args", "prefix"),
    [
        (["--model", "gpt-4o", "--input", "-5"], "error: input: "),
        (["--model", "gpt-4o", "--output", "12abc"], "error: output: "),
        (["--model", "gpt-4o", "--at", "2025-02-30"], "error: at: "),
        (["--model", "gpt-4o", "--at", "yesterday"], "error: at: "),
        (["--model", "gpt-4o", "--provider", "openai", "--usage-json", "{not json"], "error: usage-json: "),
        (["--model", "gpt-4o", "--usage-json", "{}"], "error: provider: "),
        (["--model", "gpt-4o", "--provider", "openai", "--usage-json",
          '{"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 9}}'],
         "error: usage-json.prompt_tokens_details.cached_tokens: "),
        (["--model", "gpt-4o", "--provider", "nope", "--usage-json", "{}"], "error: provider: "),
        (["--input", "5"], "error: model: "),
    ],
)
def test_bad_args_exit_2_with_one_line(args: list[str], prefix: str) -> None:
    r = runner.invoke(_app(), ["price", *args])
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), r.stderr
    assert "Traceback" not in r.output and r.stdout == ""


def test_prices_list_json() -> None:
    r = runner.invoke(_app(), ["prices", "list", "--json"])
    assert r.exit_code == 0
    body = json.loads(r.stdout)
    rows = {(m["model"], m["valid_from"]): m for m in body["models"]}
    assert rows[("gpt-4o", "2024-10-02")]["input"] == "2.500000000"
    assert rows[("claude-3-haiku", "2024-03-13")]["output"] == "1.250000000"


def test_prices_import_litellm(tmp_path: Path) -> None:
    src = tmp_path / "litellm.json"
    src.write_text(json.dumps({
        "sample_spec": {"mode": "chat"},
        "m1": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, "litellm_provider": "openai", "mode": "chat"},
        "e1": {"input_cost_per_token": 1e-07, "output_cost_per_token": 0, "litellm_provider": "openai", "mode": "embedding"},
    }))
    out = tmp_path / "prices.json"
    r = runner.invoke(_app(), ["prices", "import-litellm", str(src), "--out", str(out), "--valid-from", "2026-01-01"])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["catalog_version"] == "2026-01-01"
    assert [(m["model"], m["input"], m["output"], m["valid_from"]) for m in data["models"]] == [
        ("m1", "2.5", "10", "2026-01-01")]


def test_prices_import_litellm_bad_file(tmp_path: Path) -> None:
    r = runner.invoke(_app(), ["prices", "import-litellm", str(tmp_path / "missing.json")])
    assert r.exit_code == 2 and r.stderr.startswith("error: file: ") and len(r.stderr.splitlines()) == 1


def test_a_misspelt_model_gets_suggestions_and_a_misspelt_provider_is_refused() -> None:
    r = runner.invoke(_app(), ["price", "--model", "claude-3-5-sonet", "--input", "10", "--json"])
    assert r.exit_code == 2 and r.stdout == ""
    assert "did you mean claude-3-5-sonnet" in r.stderr and len(r.stderr.splitlines()) == 1
    r = runner.invoke(_app(), ["price", "--model", "gpt-4o", "--provider", "opnai", "--input", "10"])
    assert r.exit_code == 2
    assert "error: provider: unknown provider 'opnai'; did you mean 'openai'?" in r.stderr
