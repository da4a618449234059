"""Signed result links: an image opens without credentials while its link is fresh, and only the
owner (or an admin) can mint one; expired, tampered and re-pointed links are refused."""

from __future__ import annotations

import time
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from bitinglip import signed_urls
from tests.conftest import IMAGE_MODEL, result_path
from tests.console.conftest import User
from tests.platform_harness import Platform
from tests.security.conftest import envelope
from tests.test_jobs import wait_done

SECRET = "s" * 48


def test_signatures_bind_path_and_expiry() -> None:
    url, expires = signed_urls.sign(SECRET, "http://gw/api/v1/results/signed", "images/ada/x/0.png", 60, now=1000)
    assert expires == 1060 and url.startswith("http://gw/api/v1/results/signed/images/ada/x/0.png?")
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    assert signed_urls.check(SECRET, "images/ada/x/0.png", 1060, sig, now=1059) is None
    assert signed_urls.check(SECRET, "images/ada/x/0.png", 1060, sig, now=1061) == "expired"
    assert signed_urls.check(SECRET, "images/bob/x/0.png", 1060, sig, now=1000) == "invalid"
    assert signed_urls.check(SECRET, "images/ada/x/0.png", 99999, sig, now=1000) == "invalid"
    assert signed_urls.check("t" * 48, "images/ada/x/0.png", 1060, sig, now=1000) == "invalid"


@pytest.fixture(scope="module")
def alice_image(platform: Platform, users: dict[str, User]) -> str:
    """The result path of an image Alice generated (images/ALICE/...)."""
    made = platform.client(key=users["alice"].key).post(
        "/v1/images/generations",
        json={"model": IMAGE_MODEL, "prompt": "a kite", "size": "64x64", "response_format": "url"},
    )
    assert made.status_code == 200, made.text
    path = result_path(made.json()["data"][0]["url"])
    assert path.startswith(f"images/{users['alice'].username}/")
    return path


def test_owner_signs_and_anyone_with_the_link_sees_the_image(
    platform: Platform, users: dict[str, User], alice_image: str
) -> None:
    alice = platform.client(key=users["alice"].key)
    signed = alice.post("/api/v1/results/sign", json={"path": alice_image, "ttl_s": 60})
    assert signed.status_code == 200, signed.text
    link = signed.json()
    assert time.time() + 50 < link["expires_at"] <= time.time() + 61
    opened = platform.client(key="").get(link["url"])
    assert opened.status_code == 200 and opened.headers["content-type"] == "image/png"
    assert opened.content == alice.get(f"/api/v1/files/{alice_image}").content
    # an admin may sign anyone's result
    assert platform.client().post("/api/v1/results/sign", json={"path": alice_image}).status_code == 200


def test_another_user_cannot_sign_it(platform: Platform, users: dict[str, User], alice_image: str) -> None:
    bob = platform.client(key=users["bob"].key)
    envelope(bob.post("/api/v1/results/sign", json={"path": alice_image}), 404, "not_found_error")
    own_prefix = alice_image.replace(users["alice"].username, users["bob"].username, 1)
    trick = f"images/{users['bob'].username}/../{users['alice'].username}/{alice_image.split('/', 2)[2]}"
    envelope(bob.post("/api/v1/results/sign", json={"path": trick}), 400, "invalid_request_error")
    assert bob.post("/api/v1/results/sign", json={"path": own_prefix}).status_code == 200  # his own folder: fine
    envelope(platform.client(key="").post("/api/v1/results/sign", json={"path": alice_image}), 401)


def test_expired_tampered_and_repointed_links_are_refused(
    platform: Platform, users: dict[str, User], alice_image: str
) -> None:
    anonymous = platform.client(key="")
    secret = platform.settings.secret("jwt_secret")
    base = f"{platform.gateway}/api/v1/results/signed"
    expired, _ = signed_urls.sign(secret, base, alice_image, 60, now=time.time() - 120)
    error = envelope(anonymous.get(expired), 403, "permission_error")
    assert error["code"] == "link_expired"
    good = (
        platform.client(key=users["alice"].key).post("/api/v1/results/sign", json={"path": alice_image}).json()["url"]
    )
    query = parse_qs(urlsplit(good).query)
    sig, expires = query["sig"][0], query["expires"][0]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    assert (
        envelope(anonymous.get(f"{base}/{alice_image}?expires={expires}&sig={flipped}"), 403)["code"] == "link_invalid"
    )
    later = int(expires) + 3600
    assert envelope(anonymous.get(f"{base}/{alice_image}?expires={later}&sig={sig}"), 403)["code"] == "link_invalid"
    other = alice_image.rsplit("/", 1)[0] + "/1.png"
    assert envelope(anonymous.get(f"{base}/{other}?expires={expires}&sig={sig}"), 403)["code"] == "link_invalid"


@pytest.mark.parametrize(
    "query",
    [
        "",
        "expires=1&sig=zz",
        "expires=-1&sig=" + "0" * 64,
        "expires=abc&sig=" + "0" * 64,
        "expires=1e99&sig=" + "0" * 64,
        "expires=1&sig=" + "0" * 64 + "%0a",
        "expires=1&sig=" + "G" * 64,
    ],
)
def test_hostile_link_parameters_get_the_envelope(platform: Platform, query: str) -> None:
    envelope(
        platform.client(key="").get(f"/api/v1/results/signed/images/x/y.png?{query}"), 422, "invalid_request_error"
    )


def test_a_validly_signed_path_outside_the_results_is_still_refused(platform: Platform) -> None:
    """Even a signature made with the server's own secret opens only result paths."""
    secret = platform.settings.secret("jwt_secret")
    base = f"{platform.gateway}/api/v1/results/signed"
    cases = (("files/admin/batch.jsonl", "files/admin/batch.jsonl", 404), ("prefect/cache", "prefect/cache", 404))
    for path, sent, status in (*cases, ("../secrets.json", "%2e%2e/secrets.json", 400)):  # sent as is, not normalised
        query = urlsplit(signed_urls.sign(secret, base, path, 60)[0]).query
        envelope(platform.client(key="").get(f"{base}/{sent}?{query}"), status)


def test_disabling_the_owner_voids_their_links(platform: Platform) -> None:
    """A link outlives neither its owner's account nor a disabling: the owner is checked on every open."""
    admin = platform.client()
    name = f"carl-{uuid.uuid4().hex[:6]}"
    assert admin.post("/api/v1/users", json={"username": name}).status_code == 201
    key = admin.post("/api/v1/auth/keys", json={"username": name, "name": "t"}).json()["key"]
    made = platform.client(key=key).post(
        "/v1/images/generations", json={"model": IMAGE_MODEL, "prompt": "a kite", "response_format": "url"}
    )
    assert made.status_code == 200, made.text
    answered = made.json()["data"][0]["url"]  # signed already
    link = platform.client(key=key).post("/api/v1/results/sign", json={"path": result_path(answered)}).json()["url"]
    for url in (answered, link):
        assert platform.client(key="").get(url).status_code == 200
    assert admin.patch(f"/api/v1/users/{name}", json={"disabled": True}).status_code == 200
    for url in (answered, link):
        envelope(platform.client(key="").get(url), 403)


def test_image_answers_carry_signed_links_that_expire(platform: Platform, users: dict[str, User]) -> None:
    """response_format=url answers a link that opens without credentials (as OpenAI's do), for
    BITINGLIP_RESULT_LINK_TTL_S, to a result in the caller's own folder."""
    made = platform.client(key=users["alice"].key).post(
        "/api/v1/inference/image", json={"prompt": "a kite", "width": 64, "height": 64, "response_format": "url"}
    )
    assert made.status_code == 200, made.text
    url = made.json()["data"][0]["url"]
    assert result_path(url).startswith(f"images/{users['alice'].username}/")
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    ttl = platform.settings.result_link_ttl_s
    assert time.time() + ttl - 60 < expires <= time.time() + ttl
    opened = platform.client(key="").get(url)
    assert opened.status_code == 200 and opened.content.startswith(b"\x89PNG")


def _image_artifacts(platform: Platform, task_run_id: str, job_id: str) -> list[str]:
    """The image URLs of a task run's artifacts for one job (Prefect records them a little after the job)."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterTaskRunId, ArtifactFilterType

    from bitinglip.prefect_client import prefect_client_settings

    deadline = time.monotonic() + 30
    while True:
        with prefect_client_settings(platform.settings), get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    task_run_id=ArtifactFilterTaskRunId(any_=[uuid.UUID(task_run_id)]),
                    type=ArtifactFilterType(any_=["image"]),
                )
            )
        urls = [str(a.data) for a in artifacts if job_id in (a.description or "")]
        if urls or time.monotonic() > deadline:
            return urls
        time.sleep(0.5)


def test_an_image_jobs_result_and_its_prefect_artifact_open_without_a_key(
    platform: Platform, users: dict[str, User]
) -> None:
    """The job's result and the image artifact on its Prefect run both link the image signed: it shows
    in the console and in the Prefect UI, neither of which can send a key with an <img>."""
    alice, bob = platform.client(key=users["alice"].key), platform.client(key=users["bob"].key)
    accepted = alice.post(
        "/api/v1/tasks", json={"type": "image", "params": {"prompt": "a kite", "width": 64, "height": 64, "seed": 3}}
    )
    assert accepted.status_code == 202, accepted.text
    job, _ = wait_done(alice, accepted.json()["id"])
    assert job["status"] == "completed", job
    image = job["result"]["images"][0]
    assert image["path"].startswith(f"jobs/{users['alice'].username}/") and result_path(image["url"]) == image["path"]
    ttl = platform.settings.result_link_ttl_s
    assert time.time() + ttl - 60 < image["url_expires_at"] <= time.time() + ttl
    stored = alice.get(f"/api/v1/files/{image['path']}").content
    assert platform.client(key="").get(image["url"]).content == stored
    envelope(bob.get(f"/api/v1/tasks/{job['id']}"), 404)  # another user never gets the link to begin with

    (artifact,) = _image_artifacts(platform, job["prefect_run_id"], job["id"])
    assert result_path(artifact) == image["path"]
    expires = int(parse_qs(urlsplit(artifact).query)["expires"][0])
    assert expires > time.time() + platform.settings.artifact_link_ttl_s - 600  # outlives the API's links
    assert platform.client(key="").get(artifact).content == stored
