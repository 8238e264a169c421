"""A fake OpenAI Images server, in-process on 127.0.0.1 (http.server in a thread), answering like the
real API (shapes read from openai-python's types: ImagesResponse, Image, Usage, and its error bodies):

- POST /v1/images/edits (multipart/form-data: the fields, and the images as one `image` part or as
  repeated `image[]` parts, which is how openai-python 3.x sends `images.edit(image=[...])`: its
  extract_files names list items with brackets) answers the same way, its image the first given image's
  average colour at the asked size; no image -> 400 missing_required_parameter on `image`, more than 16
  -> 400 on `image` (the gpt-image models take up to 16); the recorded body gets `endpoint: "edits"` and
  `images`: the sha256 of each image part, in order;
- POST /v1/images/generations -> 200 {created, data: [{b64_json}], background, output_format, quality,
  size, usage: {input_tokens, input_tokens_details, output_tokens, total_tokens}} with an x-request-id;
- no bearer key or REVOKED_KEY -> 401 invalid_api_key; an unknown model -> 400 invalid_value on param model;
- faults, one per request in the order queued (`server.faults.append(...)`): "429" (rate_limit_exceeded
  with retry-after-ms), "429-seconds" (Retry-After: 1), "503", "quota" (429 insufficient_quota),
  "malformed" (200 with a body that is not JSON), "slow" (answers after `slow_s`), "drop" (closes the
  connection without answering), "undecodable" (200, an image that is no image), "huge" (200, a PNG
  header claiming 12000x12000), "size:WxH" (200, an image of that size whatever was asked), "body:NAME"
  (200 with HOSTILE_BODIES[NAME], a malformed answer of one shape), "retry-after:VALUE" (429
  rate_limit_exceeded with that Retry-After, e.g. inf or 1e12), "truncated" (200 whose Content-Length is
  the whole answer's but the connection closes halfway through the body);
- `images_per_minute`: a sliding-window limit like the provider's; over it -> 429 rate_limit_exceeded
  with Retry-After (seconds until a slot frees);
- `requests`: every request's JSON body, in order (faulted ones included; an edit refused for its images
  is counted too); `served`: images returned.
"""

from __future__ import annotations

import base64
import collections
import functools
import hashlib
import io
import itertools
import json
import math
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REVOKED_KEY = "sk-revoked"  # answered 401 invalid_api_key, like a key the provider no longer accepts
MAX_EDIT_IMAGES = 16
KNOWN_MODELS = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2")


@functools.lru_cache(maxsize=64)
def _png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    """A solid PNG (cached: the fake's own encoding time stays out of what the tests and benchmarks time)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _header_only_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (its pixel data is a few bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def _hostile_bodies() -> dict[str, bytes]:
    """Malformed 200 answers a hostile or broken server can send, by name (the "body:NAME" fault)."""
    good = base64.b64encode(_png(8, 8, (1, 2, 3))).decode()
    shapes = {
        "data-missing": {"created": 1}, "data-null": {"created": 1, "data": None},
        "data-object": {"created": 1, "data": {"b64_json": good}}, "data-string": {"created": 1, "data": "x"},
        "data-empty": {"created": 1, "data": []}, "data-too-many": {"created": 1, "data": [{"b64_json": good}] * 2},
        "item-string": {"created": 1, "data": ["x"]}, "item-empty": {"created": 1, "data": [{}]},
        "item-url": {"created": 1, "data": [{"url": "http://127.0.0.1:1/image.png"}]},
        "b64-not-base64": {"created": 1, "data": [{"b64_json": "@@@@ not base64"}]},
        "b64-number": {"created": 1, "data": [{"b64_json": 5}]},
        "top-array": [{"b64_json": good}], "top-string": "ok", "top-null": None, "top-number": 5,
    }
    bodies = {name: json.dumps(shape).encode() for name, shape in shapes.items()}
    bodies.update({
        "html": b"<html><body>502 Bad Gateway</body></html>", "empty": b"",
        "deep": b"[" * 100_000 + b"]" * 100_000,  # deeper than Python's JSON parser recurses
        "long-number": b'{"created": ' + b"9" * 5000 + b', "data": []}',
        "not-utf8": b'{"data": \xff\xfe}',
    })
    return bodies


HOSTILE_BODIES = _hostile_bodies()


def _form(content_type: str, raw: bytes) -> tuple[dict, list[bytes]]:
    """A multipart/form-data body: its text fields (n as a number) and the image files, in order (parts
    named `image`, or `image[]` as the client names the items of a list)."""
    from email import policy
    from email.parser import BytesParser

    message = BytesParser(policy=policy.HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    fields, images = {}, []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if name in ("image", "image[]"):
            images.append(payload)
        elif name:
            text = payload.decode()
            fields[name] = int(text) if name == "n" else text
    return fields, images


def _error(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class FakeImagesServer:
    def __init__(self, images_per_minute: float | None = None, slow_s: float = 2.0):
        self.faults: collections.deque[str] = collections.deque()
        self.requests: list[dict] = []
        self.served = 0
        self.images_per_minute = images_per_minute
        self.slow_s = slow_s
        self._starts: collections.deque[float] = collections.deque()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def start(self) -> "FakeImagesServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _over_limit(self, images: int) -> float | None:
        """Seconds until `images` more fit in the last minute's window, or None when they fit now."""
        if self.images_per_minute is None:
            return None
        now = time.monotonic()
        while self._starts and now - self._starts[0] >= 60:
            self._starts.popleft()
        if len(self._starts) + images <= self.images_per_minute:
            self._starts.extend([now] * images)
            return None
        return 60 - (now - self._starts[0])

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                # Headers and body go out in two writes; without TCP_NODELAY (which real servers set)
                # Nagle's algorithm meets the client's delayed ACK and adds 40 ms to some answers.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _send(self, status: int, payload, headers: dict | None = None) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-request-id", f"req_fake{next(server._ids):06d}")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                endpoint = self.path.rstrip("/")
                if endpoint not in ("/v1/images/generations", "/v1/images/edits"):
                    return self._send(404, _error(f"Invalid URL (POST {self.path})", "invalid_request_error", None))
                edit_image = None
                if endpoint.endswith("/edits"):  # multipart/form-data: the fields and the image files
                    body, files = _form(self.headers.get("Content-Type", ""), raw)
                    body["endpoint"] = "edits"
                    body["images"] = [hashlib.sha256(data).hexdigest() for data in files]
                    if not files or len(files) > MAX_EDIT_IMAGES:
                        with server._lock:
                            server.requests.append(body)
                        if not files:
                            return self._send(400, _error("Missing required parameter: 'image'.", "invalid_request_error",
                                                          "missing_required_parameter", "image"))
                        return self._send(400, _error(f"Invalid 'image': too many images, at most {MAX_EDIT_IMAGES}.",
                                                      "invalid_request_error", "invalid_value", "image"))
                    from PIL import Image

                    edit_image = Image.open(io.BytesIO(files[0]))
                    edit_image.load()
                else:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        return self._send(400, _error("We could not parse the JSON body of your request.",
                                                      "invalid_request_error", None))
                with server._lock:
                    server.requests.append(body)
                    fault = server.faults.popleft() if server.faults else None
                key = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                if not key or key == REVOKED_KEY:
                    return self._send(401, _error("Incorrect API key provided.", "invalid_request_error",
                                                  "invalid_api_key"))
                if fault == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return None
                if fault == "slow":
                    time.sleep(server.slow_s)
                if fault == "503":
                    return self._send(503, _error("The server is overloaded or not ready yet.", "server_error", None))
                if fault == "429":
                    return self._send(429, _error("Rate limit reached for images per minute. Please try again "
                                                  "in 20ms.", "requests", "rate_limit_exceeded"),
                                      {"retry-after-ms": "20", "retry-after": "1"})
                if fault == "429-seconds":
                    return self._send(429, _error("Rate limit reached for images per minute. Please try again "
                                                  "in 1s.", "requests", "rate_limit_exceeded"), {"retry-after": "1"})
                if fault == "quota":
                    return self._send(429, _error("You exceeded your current quota, please check your plan and "
                                                  "billing details.", "insufficient_quota", "insufficient_quota"))
                if fault and fault.startswith("body:"):
                    return self._send(200, HOSTILE_BODIES[fault.removeprefix("body:")])
                if fault and fault.startswith("retry-after:"):
                    return self._send(429, _error("Rate limit reached for images per minute.", "requests",
                                                  "rate_limit_exceeded"),
                                      {"retry-after": fault.removeprefix("retry-after:")})
                if fault == "truncated":  # the headers promise the whole answer; half the body, then a close
                    whole = json.dumps({"created": 1, "data": [{"b64_json": base64.b64encode(
                        _png(1024, 1024, (9, 9, 9))).decode()}]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(whole)))
                    self.end_headers()
                    self.wfile.write(whole[:len(whole) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return None
                if fault == "malformed":
                    return self._send(200, b'{"created": 1, "data": [{"b64_json": "iVBOR')
                if fault == "undecodable":  # well-formed JSON whose image is no image
                    return self._send(200, {"created": 1, "data": [{"b64_json": base64.b64encode(
                        b"<html>not an image</html>").decode()}]})
                if fault == "huge":  # a PNG header claiming 12000x12000 (what a hostile server can send)
                    return self._send(200, {"created": 1, "data": [{"b64_json": base64.b64encode(
                        _header_only_png(12000, 12000)).decode()}]})
                model = body.get("model", "gpt-image-1")
                if model not in KNOWN_MODELS:
                    return self._send(400, _error(f"Invalid value: '{model}'. Supported values are: "
                                                  f"{', '.join(map(repr, KNOWN_MODELS))}.", "invalid_request_error",
                                                  "invalid_value", "model"))
                n = int(body.get("n", 1))
                with server._lock:
                    wait = server._over_limit(n)
                if wait is not None:
                    return self._send(429, _error(f"Rate limit reached for {model} on images per minute (IPM): "
                                                  f"Limit {server.images_per_minute:g}. Please try again in "
                                                  f"{wait:.3f}s.", "requests", "rate_limit_exceeded"),
                                      {"retry-after": str(max(1, math.ceil(wait)))})
                width, height = (int(side) for side in body.get("size", "1024x1024").split("x"))
                if fault and fault.startswith("size:"):  # an image of another size than asked
                    width, height = (int(side) for side in fault.removeprefix("size:").split("x"))
                data = []
                for _ in range(n):
                    with server._lock:
                        server.served += 1
                        shade = server.served
                    shade = shade % 32  # 32 colours, so the PNG cache serves most images
                    colour = (shade * 37 % 256, shade * 91 % 256, shade * 53 % 256)
                    if edit_image is not None:  # an "edit": the given image at the asked size
                        colour = edit_image.convert("RGB").resize((1, 1)).getpixel((0, 0))
                    data.append({"b64_json": base64.b64encode(_png(width, height, colour)).decode()})
                text_tokens = len(body.get("prompt", "").split())
                self._send(200, {
                    "created": int(time.time()), "data": data,
                    "background": body.get("background", "opaque") if body.get("background") != "auto" else "opaque",
                    "output_format": body.get("output_format", "png"),
                    "quality": body.get("quality", "high") if body.get("quality") != "auto" else "high",
                    "size": f"{width}x{height}",
                    "usage": {"input_tokens": text_tokens, "input_tokens_details": {"text_tokens": text_tokens,
                                                                                   "image_tokens": 0},
                              "output_tokens": 4160 * n, "total_tokens": text_tokens + 4160 * n},
                })

        return Handler


@contextmanager
def fake_images_server(**kwargs):
    server = FakeImagesServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()


# A workspace allowing the openai engine, with fast retries, a short timeout and no pacing to speak of.
FAST_OPENAI_TOML = ('[engines.openai]\nallow = true\nimages_per_minute = 60000\nretry_initial_s = 0.01\n'
                    'retry_max_s = 0.05\nmax_attempts = 3\ntimeout_s = 1.0\n')


def hosted_workspace(tmp_path, toml: str = FAST_OPENAI_TOML):
    from echo_os.settings import load_settings

    home = tmp_path / "hosted"
    home.mkdir()
    (home / "echo-os.toml").write_text(toml, encoding="utf-8")
    return load_settings(home, env={})
