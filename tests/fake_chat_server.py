"""A fake OpenAI-compatible chat server on 127.0.0.1 (uvicorn in a thread), for the language-model planner.

It answers POST /v1/chat/completions the way the OpenAI API does: the request must carry a bearer key,
a model and a non-empty messages list (else a 400/401 with the API's {"error": {...}} body); the answer
is a `chat.completion` object (id, object, created, model, choices[{index, message, finish_reason,
logprobs}], usage), which the official openai client parses. The content of each answer is taken in
turn from `answers` (or a whole body from `raw`, while it has any); every request body is kept in
`requests` for the test to inspect.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class FakeChatServer:
    answers: list[str]
    # Whole response bodies answered instead of a chat.completion, one per request in order, while any are
    # left (a hostile or broken server: {"choices": []}, a body that is not JSON, ...).
    raw: list = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        def error(status: int, message: str, param: str | None, code: str) -> JSONResponse:
            return JSONResponse(status_code=status, content={"error": {
                "message": message, "type": "invalid_request_error", "param": param, "code": code}})

        @app.post("/v1/chat/completions")
        async def completions(request: Request):
            auth = request.headers.get("authorization", "")
            if not auth.startswith("Bearer ") or not auth[7:]:
                return error(401, "You didn't provide an API key.", None, "invalid_api_key")
            body = await request.json()
            if not body.get("model"):
                return error(400, "you must provide a model parameter", "model", "missing_required_parameter")
            if not isinstance(body.get("messages"), list) or not body["messages"]:
                return error(400, "'messages' must be a non-empty array", "messages", "invalid_value")
            self.requests.append(body)
            self.keys.append(auth[7:])
            if self.raw:
                from fastapi.responses import Response

                answer = self.raw.pop(0)
                return Response(answer, media_type="application/json") if isinstance(answer, (str, bytes)) \
                    else JSONResponse(answer)
            content = self.answers[min(len(self.requests), len(self.answers)) - 1]
            return {
                "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"], "system_fingerprint": None,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": content, "refusal": None}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }

        return app

    def __enter__(self) -> "FakeChatServer":
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(self.app(), log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()
