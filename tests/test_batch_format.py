"""The batch file format on its own: every line lands in exactly one place, with a reason if invalid."""

from __future__ import annotations

import json

from bitinglip.batches.format import chunk_key, chunks, parse_input
from bitinglip.serving.offline import check_body


def _line(custom_id: str, url: str = "/v1/chat/completions", **body: object) -> str:
    body = body or {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def test_every_line_is_a_request_or_an_error_with_its_reason() -> None:
    data = "\n".join(
        [
            _line("ok-1"),
            "{not json",
            _line("ok-2"),
            _line("bad-url", url="/v1/images/generations"),
            _line("other-endpoint", url="/v1/embeddings", model="m", input="x"),
            _line("bad-body", model="m"),  # chat without messages
            _line("ok-1"),  # duplicate
            json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}),
            _line("streaming", model="m", messages=[{"role": "user", "content": "x"}], stream=True),
            "",
            "[1, 2]",
        ]
    ).encode()
    parsed = parse_input(data, "/v1/chat/completions", check_body)
    assert [i.custom_id for i in parsed.items] == ["ok-1", "ok-2"]
    assert [i.line for i in parsed.items] == [1, 3]
    codes = [(e["custom_id"], e["error"]["code"]) for e in parsed.errors]
    assert codes == [
        (None, "invalid_json"),
        ("bad-url", "invalid_url"),
        ("other-endpoint", "mismatched_url"),
        ("bad-body", "invalid_body"),
        ("ok-1", "duplicate_custom_id"),
        (None, "missing_custom_id"),
        ("streaming", "invalid_body"),
        (None, "invalid_request"),
    ]
    assert parsed.errors[0]["error"]["message"].startswith("line 2:")
    assert "messages" in parsed.errors[3]["error"]["message"]
    assert parsed.total == 10  # the blank line is not a request


def test_chunk_keys_follow_content_and_model_revision() -> None:
    items = parse_input("\n".join(_line(f"r{i}") for i in range(10)).encode(), None, check_body).items
    planned = chunks(items, 4)
    assert [len(c) for c in planned] == [4, 4, 2]
    key = chunk_key(planned[0], {"m": "m@v1"})
    assert key == chunk_key(list(planned[0]), {"m": "m@v1"})
    assert key != chunk_key(planned[0], {"m": "m@v2"})  # a new revision recomputes
    assert key != chunk_key(planned[1], {"m": "m@v1"})


def test_readme_documents_every_setting() -> None:
    from pathlib import Path

    from bitinglip.config import Settings

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [n for n in Settings.model_fields if f"| `BITINGLIP_{n.upper()}` |" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"
