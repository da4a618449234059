"""Image generation through the gateway and the openai SDK, on the code-built tiny test pipeline;
results land on the S3 server (moto) that the session platform is configured with."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image

from tests.conftest import S3Server, result_path
from tests.platform_harness import Platform
from tests.test_gateway_text import assert_envelope
from tests.test_jobs import wait_done

MODEL = "tiny-sd-test"


@pytest.fixture(scope="module")
def client(platform: Platform) -> openai.OpenAI:
    return platform.sdk()


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_openai_images_are_pngs_of_the_size_asked_and_seeds_reproduce(client: openai.OpenAI) -> None:
    def generate(seed: int, n: int = 1) -> list[bytes]:
        response = client.images.generate(
            model=MODEL, prompt="a red fox", size="64x64", n=n, response_format="b64_json", extra_body={"seed": seed}
        )
        return [base64.b64decode(d.b64_json or "") for d in response.data or []]

    def distance(a: bytes, b: bytes) -> float:
        """Mean absolute pixel difference: the same seed gives the same image up to float noise (a
        batch shared with other requests changes CPU kernels' summation order), another seed another."""
        pa, pb = png(a).convert("RGB").getdata(), png(b).convert("RGB").getdata()
        return sum(abs(x - y) for p, q in zip(pa, pb, strict=True) for x, y in zip(p, q, strict=True)) / (3 * len(pa))

    first, again, other = generate(7)[0], generate(7)[0], generate(8)[0]
    assert png(first).size == (64, 64)
    assert png(first).text["prompt"] == "a red fox" and png(first).text["seed"] == "7"
    assert distance(first, again) < 1.0  # same seed, same image
    assert distance(first, other) > 10.0
    pair = generate(7, n=2)
    assert distance(pair[0], first) < 1.0 and distance(pair[1], first) > 10.0  # image i uses seed + i


def test_url_responses_are_stored_on_s3_and_served(
    platform: Platform, client: openai.OpenAI, s3_server: S3Server
) -> None:
    response = client.images.generate(model=MODEL, prompt="a boat", size="64x48", response_format="url")
    url = (response.data or [])[0].url or ""
    key = result_path(url)  # a signed link: it opens without credentials, as OpenAI's do
    assert key.startswith("images/")
    served = platform.client(key="").get(url)
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert png(served.content).size == (64, 48)
    assert platform.client().get(f"/api/v1/files/{key}").content == served.content
    assert s3_server.filesystem().cat_file(f"{s3_server.bucket}/results/{key}") == served.content


def test_async_image_job_writes_pngs_to_s3(platform: Platform, s3_server: S3Server) -> None:
    client = platform.client()
    accepted = client.post(
        "/api/v1/tasks",
        json={"type": "image", "params": {"prompt": "a lighthouse", "width": 64, "height": 64, "seed": 5, "n": 2}},
    )
    assert accepted.status_code == 202, accepted.text
    job, _ = wait_done(client, accepted.json()["id"])
    assert job["status"] == "completed", job
    images = job["result"]["images"]
    assert [img["seed"] for img in images] == [5, 6]
    for img in images:
        stored = s3_server.filesystem().cat_file(f"{s3_server.bucket}/results/{img['path']}")
        assert client.get(img["url"]).content == stored
        assert png(stored).size == (64, 64)


def test_bad_image_requests_are_4xx(platform: Platform, client: openai.OpenAI) -> None:
    rest = platform.client()
    assert_envelope(
        rest.post("/api/v1/inference/image", json={"prompt": "x", "width": 10000, "height": 10000}),
        400,
        "image_too_large",
    )
    assert_envelope(rest.post("/api/v1/inference/image", json={"prompt": "x", "num_inference_steps": 0}), 422)
    assert_envelope(rest.post("/api/v1/inference/image", json={"prompt": "x", "width": 65}), 422)
    assert_envelope(rest.post("/api/v1/inference/image", json={"prompt": "x", "n": 50}), 400)
    assert_envelope(rest.post("/api/v1/inference/image", json={"prompt": ""}), 422)
    assert_envelope(rest.post("/api/v1/tasks", json={"type": "image", "params": {"prompt": "x", "width": 4096}}), 400)
    assert_envelope(rest.get("/api/v1/files/../../etc/passwd"), 404)
    assert_envelope(rest.get("/api/v1/files/images/nope.png"), 404)
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model=MODEL, prompt="x", size="10000x10000")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="no-such-painter", prompt="x")
