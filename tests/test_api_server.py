"""`echo-os serve` as a real uvicorn process on 127.0.0.1, rendering with the tiny SDXL pipeline: the
official openai client, live SSE, cancel, kill -9 and restart, 20 concurrent clients, the token, raw
traversal paths."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from echo_os.settings import REPO_ROOT, Settings
from tests.api_helpers import TERMINAL
from tests.conftest import register_model

TINY = {"model": "tiny", "size": "64x64", "steps": 2, "cfg": 5.0}
START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    home: Path
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def start_server(home: Path, *args: str, port: int | None = None, wait: bool = True,
                 pythonpath: tuple[Path, ...] = ()) -> Server:
    """pythonpath: folders put on the server's sys.path after the repository (a test plugin's dist-info)."""
    port = port or free_port()
    log_path = home / f"server-{port}-{time.monotonic_ns()}.log"
    # One torch thread: on a shared 2-core machine more threads spin against each other (10x slower).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *map(str, pythonpath)]), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("ECHO_OS_TOKEN", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "echo_os", "--home", str(home), "serve", "--port", str(port),
                                    "--log-level", "warning", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(home, port, process, log_path)
    if wait:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise AssertionError(f"server exited with {process.returncode}:\n{server.log()}")
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise AssertionError(f"server did not start in {START_TIMEOUT}s:\n{server.log()}")
            time.sleep(0.1)
    return server


def wait_jobs(client: httpx.Client, job_ids: list[str], timeout: float = 240.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    pending, done = set(job_ids), {}
    while pending:
        page = client.get("/api/jobs", params={"limit": 500}).json()["items"]
        for job in page:
            if job["id"] in pending and job["status"] in TERMINAL:
                done[job["id"]] = job
                pending.discard(job["id"])
        for job_id in list(pending)[:20]:  # jobs older than the page
            job = client.get(f"/api/jobs/{job_id}").json()
            if job["status"] in TERMINAL:
                done[job_id] = job
                pending.discard(job_id)
        if pending and time.monotonic() > deadline:
            raise AssertionError(f"{len(pending)} jobs not finished after {timeout}s")
        time.sleep(0.1)
    return done


def read_events(client: httpx.Client, events_url: str, on_event=None) -> list[tuple[str, dict]]:
    """Read a live SSE stream to its end; on_event(name, data) is called as each arrives."""
    events, name = [], None
    with client.stream("GET", events_url, timeout=httpx.Timeout(240.0)) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:") and name:
                data = json.loads(line[5:])
                events.append((name, data))
                if on_event is not None:
                    on_event(name, data)
                name = None
    return events


def tiny_home(tmp_path_factory, tiny_sdxl_dir, name: str) -> Path:
    home = tmp_path_factory.mktemp(name)
    register_model(Settings(home=home), "tiny", tiny_sdxl_dir)
    return home


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sdxl_dir):
    """One server for the tests that share it: tiny model, batches of up to 16."""
    running = start_server(tiny_home(tmp_path_factory, tiny_sdxl_dir, "served"), "--model", "tiny", "--max-batch", "16")
    yield running
    running.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def test_official_openai_client_gets_an_image(server):
    import openai

    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed-on-loopback", max_retries=0, timeout=240)
    raw = api.images.with_raw_response.generate(model="dall-e-3", prompt="a lighthouse in fog", size="64x64", n=2,
                                                extra_body={"steps": 2, "seed": 11, "negative_prompt": "blurry"})
    result = raw.parse()
    assert len(result.data) == 2
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert image.size == (64, 64) and image.format == "PNG"
    ids = raw.headers["x-echo-artifact-ids"].split(",")
    assert len(ids) == 2 and all(len(i) == 64 for i in ids)
    meta = httpx.get(f"{server.url}/api/artifacts/{ids[1]}").json()
    assert meta["seed"] == 12 and meta["engine"] == "cpu" and meta["meta"]["negative_prompt"] == "blurry"

    by_url = api.images.generate(model="tiny", prompt="a harbour", size="64x64", response_format="url",
                                 extra_body={"steps": 2})
    fetched = httpx.get(by_url.data[0].url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"

    with pytest.raises(openai.UnprocessableEntityError) as error:
        api.images.generate(model="tiny", prompt="x", size="63x64")
    assert "size" in str(error.value)


def test_sse_shows_progress_then_success(client):
    job = client.post("/api/render", json={"prompt": "a storm", **TINY, "steps": 30, "count": 2}).json()
    events = read_events(client, job["events_url"])
    names = [name for name, _ in events]
    assert names[-1] == "succeeded" and names.count("artifact") == 2, names
    steps = [data["step"] for name, data in events if name == "progress"]
    assert steps and steps == sorted(steps) and steps[-1] == 30, steps
    assert names.index("progress") < names.index("artifact")


def test_cancel_a_running_render(client):
    before = len(client.get("/api/artifacts", params={"limit": 500}).json()["items"])
    job = client.post("/api/render", json={"prompt": "endless", **TINY, "steps": 200, "count": 2}).json()
    cancelled = threading.Event()

    def on_event(name, data):
        if name == "progress" and data["step"] >= 2 and not cancelled.is_set():
            cancelled.set()
            response = client.post(f"/api/jobs/{job['job_id']}/cancel")
            assert response.status_code == 202, response.text

    events = read_events(client, job["events_url"], on_event)
    assert events[-1][0] == "cancelled"
    progress = [data["step"] for name, data in events if name == "progress"]
    assert progress[-1] < 200  # stopped at a step, not at the end
    final = client.get(f"/api/jobs/{job['job_id']}").json()
    assert final["status"] == "cancelled" and final["artifact_ids"] == []
    assert len(client.get("/api/artifacts", params={"limit": 500}).json()["items"]) == before


@pytest.mark.slow  # 30-60 s on 2 shared cores
def test_twenty_clients_submit_two_hundred_jobs(server):
    accepted: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()

    def submit(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for i in range(10):
                response = http.post("/api/render", json={"prompt": f"crowd {worker}-{i}", "seed": worker * 100 + i,
                                                          "project": "crowd", **TINY})
                with lock:
                    (accepted if response.status_code == 202 else failures).append(
                        response.json()["job_id"] if response.status_code == 202 else response.text)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == [] and len(set(accepted)) == 200
    with httpx.Client(base_url=server.url, timeout=60) as http:
        jobs = wait_jobs(http, accepted)
        assert {job["status"] for job in jobs.values()} == {"succeeded"}
        assert all(len(job["artifact_ids"]) == 1 for job in jobs.values())
        crowd = http.get("/api/artifacts", params={"project": "crowd", "limit": 500}).json()["items"]
    assert len(crowd) == 200 and len({a["id"] for a in crowd}) == 200
    assert sorted(a["seed"] for a in crowd) == sorted(w * 100 + i for w in range(20) for i in range(10))


RAW_TRAVERSALS = ["/api/artifacts/../../../../etc/passwd", "/api/artifacts/..%2f..%2f..%2fetc%2fpasswd",
                  "/api/artifacts/%2e%2e%2f%2e%2e%2fcatalog.db/image", "/api/artifacts/%2Fetc%2Fpasswd/image",
                  "//etc/passwd", "/api/artifacts//etc/passwd/image", "/api/artifacts/0123456789ab%00/image",
                  "/api/artifacts/0123456789abcdef%00.png/image", "/api/artifacts/zzzzzzzzzzzz/image",
                  "/api/jobs/..%2f..%2fjobs.db", "/api/artifacts/%2e%2e/image", "/../../etc/passwd",
                  "/api/artifacts/0123456789ab%2f..%2f..%2f..%2fetc%2fpasswd/image", "/api/artifacts/\\..\\..\\etc"]


def test_raw_traversal_paths_never_leave_the_store(server):
    for path in RAW_TRAVERSALS:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            connection.putrequest("GET", path, skip_accept_encoding=True)
            connection.endheaders()
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        assert response.status in (400, 404, 405, 422), (path, response.status)
        assert b"root:" not in body and b"SQLite format" not in body, path


@pytest.mark.slow  # 40 s on 2 shared cores: two server starts, 16 tiny renders
def test_kill_9_and_restart_completes_every_job_exactly_once(tmp_path_factory, tiny_sdxl_dir):
    """Four jobs of 4 images, 2 images per pipeline call: killed while a job that has saved some of
    its images renders the rest, with jobs still queued."""
    home = tiny_home(tmp_path_factory, tiny_sdxl_dir, "crash")
    port = free_port()
    first = start_server(home, "--max-batch", "2", port=port)
    try:
        with httpx.Client(base_url=first.url, timeout=60) as http:
            ids = [http.post("/api/render", json={"prompt": f"crash {i}", "seed": 1000 * i, **TINY, "steps": 20,
                                                  "count": 4}).json()["job_id"] for i in range(4)]
            deadline = time.monotonic() + 240
            while True:
                jobs = {job["id"]: job for job in http.get("/api/jobs", params={"limit": 50}).json()["items"]}
                partly = [i for i in ids if jobs[i]["status"] == "running" and 0 < len(jobs[i]["artifact_ids"]) < 4]
                if partly and any(jobs[i]["status"] == "queued" for i in ids):
                    # read before the kill: a worker process puts its jobs back as soon as the server is gone
                    running = [i for i in ids if jobs[i]["status"] == "running"]
                    break
                assert time.monotonic() < deadline, [jobs[i]["status"] for i in ids]
                time.sleep(0.01)
    finally:
        first.kill()
    time.sleep(1.0)  # the orphaned worker process notices and stops (at most one denoising step)
    db = sqlite3.connect(home / "artifacts" / "jobs.db")
    saved_before = {job_id: [row[0] for row in db.execute(
        "SELECT artifact_id FROM job_images WHERE job_id = ? ORDER BY image", (job_id,))] for job_id in ids}
    db.close()
    assert running, "no job was running when the server was killed"

    second = start_server(home, "--max-batch", "2", port=port)
    try:
        with httpx.Client(base_url=second.url, timeout=60) as http:
            done = wait_jobs(http, ids)
            artifacts = http.get("/api/artifacts", params={"limit": 500}).json()["items"]
    finally:
        second.stop()
    assert [done[i]["status"] for i in ids] == ["succeeded"] * 4
    assert all(len(set(done[i]["artifact_ids"])) == 4 for i in ids)
    for job_id in ids:  # what was saved before the kill is kept, not made again
        assert done[job_id]["artifact_ids"][:len(saved_before[job_id])] == saved_before[job_id]
    # interrupted by the kill (an outage: no attempt spent, an interruption counted), then ran again
    assert all((done[job_id]["attempts"], done[job_id]["interruptions"]) == (1, 1) for job_id in running)
    assert len(artifacts) == 16
    assert sorted(a["seed"] for a in artifacts) == sorted(1000 * i + k for i in range(4) for k in range(4))
    assert len(list((home / "artifacts").glob("*/*/*/image.png"))) == 16  # no duplicate folder either


def test_token_on_a_real_server(tmp_path):
    server = start_server(tmp_path, "--token", "tok-123")
    try:
        assert httpx.get(f"{server.url}/health").status_code == 200
        for method, path in (("GET", "/api/jobs"), ("POST", "/api/render"), ("GET", "/openapi.json"),
                             ("POST", "/v1/images/generations"), ("GET", f"/api/artifacts/{'a' * 64}/image"),
                             ("GET", f"/api/jobs/{'a' * 32}/events")):
            assert httpx.request(method, f"{server.url}{path}", json={}).status_code == 401, path
        ok = {"Authorization": "Bearer tok-123"}
        assert httpx.get(f"{server.url}/api/jobs", headers=ok).status_code == 200
        assert httpx.post(f"{server.url}/api/render", headers=ok, json={"prompt": "x", "engine": "draft",
                                                                         "size": "64x64"}).status_code == 202
    finally:
        server.stop()


def test_no_log_line_holds_the_token(tmp_path):
    """Red-team finding: the gallery sign-in (`GET /api/gallery?token=T`) was written in clear to uvicorn's
    access log. With the access log on (--log-level info), neither the server's token nor a wrong one
    sent in the query appears in any line the server writes; the sign-in itself still works."""
    token = "s3cret-token-0123456789abcdef"
    wrong = "wrong-token-9876543210fedcba"
    server = start_server(tmp_path, "--token", token, "--log-level", "info")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            signed_in = http.get(f"/api/gallery?token={token}", follow_redirects=False)
            assert signed_in.status_code == 303 and "echo_os_session" in signed_in.headers["set-cookie"]
            assert http.get(f"/api/gallery?token={wrong}", follow_redirects=False).status_code == 401
            assert http.get(f"/api/jobs?x=1&token={token}").status_code in (200, 401)
            assert http.get(f"/api/not-{token}", headers={"Authorization": f"Bearer {token}"}).status_code == 404
    finally:
        server.stop()
    log = server.log()
    assert "/api/gallery?token=<redacted>" in log, log  # the access log is on, and names the request
    assert token not in log and wrong not in log, log


def test_refuses_a_public_address_without_a_token(tmp_path):
    result = subprocess.run([sys.executable, "-m", "echo_os", "--home", str(tmp_path), "serve", "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=60,
                            env=dict({k: v for k, v in os.environ.items() if k != "ECHO_OS_TOKEN"},
                                     PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in result.stderr


def test_a_second_server_on_the_same_workspace_is_refused(server):
    result = subprocess.run([sys.executable, "-m", "echo_os", "--home", str(server.home), "serve", "--port",
                             str(free_port())], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 2 and "another echo-os server is serving" in result.stderr
