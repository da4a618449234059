"""Batch jobs end to end: the openai SDK against the gateway, the batch flow run on the `gpu` pool
worker, outputs on the S3 server (the session platform keeps results there) or local disk."""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from tests.conftest import EMBEDDING_MODEL, TEXT_MODEL, S3Server
from tests.platform_harness import Platform
from tests.prefect_runs import artifacts_of, flow_run, flow_runs_tagged, table_rows


def chat_line(custom_id: str, content: str, max_tokens: int = 4) -> dict[str, Any]:
    body = {"model": TEXT_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": {**body, "temperature": 0}}


def jsonl(lines: list[Any]) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def parse(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sdk(platform: Platform) -> Iterator[openai.OpenAI]:
    client = platform.sdk()
    yield client
    client.close()


def wait_batch(sdk: openai.OpenAI, batch_id: str, until: Any = None, timeout: float = 240) -> Any:
    """Poll until `until(batch)` holds (default: a final status)."""
    done = until or (lambda b: b.status in ("completed", "failed", "cancelled", "expired"))
    deadline = time.monotonic() + timeout
    while not done(batch := sdk.batches.retrieve(batch_id)):
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
        time.sleep(0.3)
    return batch


def submit(sdk: openai.OpenAI, lines: list[Any], endpoint: str = "/v1/chat/completions") -> Any:
    upload = sdk.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return sdk.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]


def test_sdk_chat_batch_on_s3_every_custom_id_once(platform: Platform, sdk: openai.OpenAI, s3_server: S3Server) -> None:
    valid = [chat_line(f"q-{i}", f"Count to {i}.") for i in range(9)]
    invalid = [
        "{this is not json",
        {**chat_line("bad-url", "x"), "url": "/v1/images/generations"},
        {**chat_line("bad-body", "x"), "body": {"model": TEXT_MODEL}},
        {**chat_line("bad-model", "x"), "body": {**chat_line("", "x")["body"], "model": "no-such-model"}},
    ]
    batch = submit(sdk, valid[:4] + invalid + valid[4:])
    assert batch.status == "validating" and batch.request_counts.total == 0

    done = wait_batch(sdk, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (13, 9, 4)
    outputs = parse(sdk.files.content(done.output_file_id).text)
    errors = parse(sdk.files.content(done.error_file_id).text)
    assert sorted(o["custom_id"] for o in outputs) == sorted(v["custom_id"] for v in valid)  # each exactly once
    assert sorted(str(e["custom_id"]) for e in errors) == ["None", "bad-body", "bad-model", "bad-url"]
    for out in outputs:
        body = out["response"]["body"]
        assert out["response"]["status_code"] == 200 and out["error"] is None
        assert body["object"] == "chat.completion" and body["model"] == TEXT_MODEL
        assert body["choices"][0]["message"]["content"] and 0 < body["usage"]["completion_tokens"] <= 4
    by_id = {str(e["custom_id"]): e for e in errors}
    assert by_id["None"]["error"]["code"] == "invalid_json" and "line 5" in by_id["None"]["error"]["message"]
    assert by_id["bad-model"]["response"]["status_code"] == 404

    # the files live in S3, the batch is a job with a Prefect flow run, and outputs are files of their own
    fs = s3_server.filesystem()
    assert fs.exists(f"{s3_server.bucket}/results/batches/{batch.id}/output.jsonl")
    assert sdk.files.retrieve(done.output_file_id).purpose == "batch_output"
    job = platform.client().get(f"/api/v1/tasks/{batch.id}").json()
    assert job["type"] == "batch" and "/runs/flow-run/" in job["prefect_url"]
    assert job["result"]["chunks"] == {"total": 3, "done": 3, "cached": 0, "computed": 3}
    assert batch.id in [b.id for b in sdk.batches.list(limit=100).data]

    # the same file again: every chunk comes from the cache
    again = wait_batch(sdk, submit(sdk, valid[:4] + invalid + valid[4:]).id)
    rerun = platform.client().get(f"/api/v1/tasks/{again.id}").json()
    assert rerun["result"]["chunks"]["cached"] == 3 and again.request_counts.completed == 9


def test_scheduled_style_run_over_a_local_pattern(platform: Platform, tmp_path: Path) -> None:
    """The deployment as a schedule runs it: a glob of inputs on local disk into a dated folder."""
    from prefect.deployments import run_deployment

    from bitinglip.prefect_client import prefect_client_settings

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    embeddings = [
        {
            "custom_id": f"e-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": EMBEDDING_MODEL, "input": t},
        }
        for i, t in enumerate(["a cat", "a dog", "the sea"])
    ]
    (inbox / "vectors.jsonl").write_bytes(jsonl(embeddings))
    completions = [
        {
            "custom_id": f"c-{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": TEXT_MODEL, "prompt": f"{i} plus {i} is", "max_tokens": 3, "temperature": 0},
        }
        for i in range(5)
    ]
    (inbox / "sums.jsonl").write_bytes(jsonl(completions))
    with prefect_client_settings(platform.settings):
        run = run_deployment(
            "batch-inference/batch-inference",
            parameters={"input_path": f"{inbox}/*.jsonl", "output_path": f"{tmp_path}/outbox/{{date}}"},
            timeout=240,
        )
    assert run.state is not None and run.state.is_completed(), run.state  # type: ignore[union-attr]
    day = tmp_path / "outbox" / dt.date.today().isoformat()
    vectors = parse((day / "vectors" / "output.jsonl").read_text())
    assert [v["custom_id"] for v in vectors] == ["e-0", "e-1", "e-2"]
    assert len(vectors[0]["response"]["body"]["data"][0]["embedding"]) == 384
    sums = parse((day / "sums" / "output.jsonl").read_text())
    assert sorted(s["custom_id"] for s in sums) == [f"c-{i}" for i in range(5)]
    assert all(s["response"]["body"]["object"] == "text_completion" for s in sums)
    assert (day / "sums" / "errors.jsonl").read_text() == ""
    assert not list(day.rglob("*.tmp"))  # written atomically: no temporary files left behind


def _flow_run_process(run_id: str) -> psutil.Process:
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("PREFECT__FLOW_RUN_ID") == run_id:
                return proc
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    raise AssertionError(f"no process runs flow run {run_id}")


def _claimant(job: dict[str, Any]) -> str:
    """The flow run holding the job (its `worker` is `flow-run:<id>`): not always the job's last
    Prefect run, since a slow-starting run can be dispatched again, and that second run then skips."""
    return str(job["worker"]).removeprefix("flow-run:")


def _job(platform: Platform, batch_id: str) -> dict[str, Any]:
    return dict(platform.client().get(f"/api/v1/tasks/{batch_id}").json())


def test_killed_flow_run_resumes_without_recomputing_finished_chunks(platform: Platform, sdk: openai.OpenAI) -> None:
    lines = [chat_line(f"k-{i}", f"Write a word about the number {i}.", max_tokens=12) for i in range(40)]
    batch = submit(sdk, lines)  # 10 chunks of 4
    wait_batch(sdk, batch.id, until=lambda b: b.request_counts.completed >= 8, timeout=180)
    job = _job(platform, batch.id)
    done_at_kill = job["progress"]["chunks"]["done"]
    _flow_run_process(_claimant(job)).send_signal(signal.SIGKILL)

    done = wait_batch(sdk, batch.id, timeout=300)  # the reaper re-queues it; a new flow run resumes it
    assert done.status == "completed", done
    job = _job(platform, batch.id)
    chunks = job["result"]["chunks"]
    assert job["attempts"] == 2
    assert chunks["total"] == 10 and chunks["cached"] >= done_at_kill >= 2
    assert chunks["computed"] == 10 - chunks["cached"]  # finished chunks were not computed again
    outputs = parse(sdk.files.content(done.output_file_id).text)
    assert sorted(o["custom_id"] for o in outputs) == sorted(line["custom_id"] for line in lines)
    assert done.request_counts.completed == 40 and done.error_file_id is None


def test_cancel_stops_after_the_chunk_in_flight_and_keeps_partial_results(
    platform: Platform, sdk: openai.OpenAI
) -> None:
    lines = [chat_line(f"c-{i}", f"Say something about {i}.", max_tokens=12) for i in range(40)]
    batch = submit(sdk, lines)
    wait_batch(sdk, batch.id, until=lambda b: b.request_counts.completed >= 4, timeout=180)
    assert sdk.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    done = wait_batch(sdk, batch.id)
    assert done.status == "cancelled"
    assert 4 <= done.request_counts.completed < 40 and done.request_counts.total == 40
    outputs = parse(sdk.files.content(done.output_file_id).text)
    assert len(outputs) == done.request_counts.completed
    assert len({o["custom_id"] for o in outputs}) == len(outputs)
    run = flow_run(platform, _claimant(_job(platform, batch.id)))
    assert run.state.type.value == "CANCELLED"  # the run says what became of the batch, not Completed


def test_a_batch_run_is_named_after_its_input_file_and_its_artifacts_describe_the_batch(
    platform: Platform, sdk: openai.OpenAI
) -> None:
    """Found in the Prefect UI by file name, owner and type; the progress artifact names the batch (no
    server path), and the summary is a two-column table with a label on every row."""
    filename = "..\\Q3 «leads» <img src=x>.jsonl"  # as a hostile client may name an upload
    lines = [chat_line(f"n-{i}", f"Name a colour {i}.") for i in range(4)] + ["{not json"]
    upload = sdk.files.create(file=(filename, jsonl(lines)), purpose="batch")
    batch = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_batch(sdk, batch.id)
    assert done.status == "completed", done
    job = _job(platform, batch.id)
    run = flow_run(platform, _claimant(job))
    label = "Q3 _leads_ _img src_x_.jsonl"
    assert run.name == f"batch {label} · {job['owner']}"
    assert {"bitinglip", "batch", f"owner:{job['owner']}"} <= set(run.tags)
    assert run.parameters == {"job_id": batch.id}
    (tagged,) = [r for r in flow_runs_tagged(platform, f"owner:{job['owner']}", "batch", count=1) if r.id == run.id]
    assert tagged.name == run.name

    artifacts = artifacts_of(platform, str(run.id), ("progress", "table"))
    progress = artifacts["progress"]
    assert progress.description == f"batch {batch.id} · {label}: 5 requests, 4 valid in 1 chunks, 1 invalid"
    assert progress.data == 100.0
    assert str(platform.settings.home_dir) not in progress.description and "s3://" not in progress.description
    rows = table_rows(artifacts["table"])
    assert all(set(row) == {"item", "value"} for row in rows), rows
    figures = {row["item"]: row["value"] for row in rows}
    assert figures["batch"] == batch.id and figures["input"] == label and figures["owner"] == job["owner"]
    assert (figures["requests"], figures["completed"], figures["failed"]) == ("5", "4", "1")
    assert figures["output_file_id"] == done.output_file_id and figures["error_file_id"] == done.error_file_id


def test_bad_files_and_batches_get_clear_errors(platform: Platform, sdk: openai.OpenAI) -> None:
    client = platform.client()
    before = {f.id for f in sdk.files.list(limit=1000).data}

    def upload(data: bytes, purpose: str = "batch") -> httpx.Response:
        return client.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": purpose})

    ok = jsonl([chat_line("a", "hi")])
    cases = {
        "too_large": upload(b"x" * 300_000),  # over the upload limit: refused before it is read
        "over_bound": upload(jsonl([chat_line(f"{i}", "y" * 500) for i in range(300)])),
        "too_many_lines": upload(jsonl([chat_line(f"{i}", "y") for i in range(501)])),
        "not_utf8": upload(b"\xff\xfe{}\n"),
        "empty": upload(b"\n\n"),
        "purpose": upload(ok, purpose="fine-tune"),
    }
    assert cases.pop("too_large").status_code == 413
    for name, response in cases.items():
        assert response.status_code == 400, (name, response.text)
        assert response.json()["error"]["type"] == "invalid_request_error", name

    file_id = upload(ok).json()["id"]
    bad_endpoint = client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/images/generations"})
    assert bad_endpoint.status_code == 400 and bad_endpoint.json()["error"]["param"] == "endpoint"
    with pytest.raises(openai.NotFoundError):
        sdk.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        sdk.batches.retrieve("no-such-batch")
    # nothing half-written: the refused uploads left no file records
    added = {f.id for f in sdk.files.list(limit=1000).data} - before
    assert added == {file_id}
