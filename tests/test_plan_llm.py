"""The opt-in language-model planner against a fake OpenAI-compatible chat server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from tests.fake_chat_server import FakeChatServer

INTENT = "warm fractal, no human forms"


def _answer(*prompts: str) -> str:
    return json.dumps({"items": [{"prompt": prompt} for prompt in prompts]})


@pytest.fixture
def planner_env(monkeypatch):
    def configure(url: str) -> None:
        monkeypatch.setenv("ECHO_OS_PLANNER_URL", url)
        monkeypatch.setenv("ECHO_OS_PLANNER_MODEL", "local-model")
        monkeypatch.setenv("ECHO_OS_PLANNER_API_KEY", "sk-test")
    return configure


def test_a_schema_valid_answer_is_accepted_with_structured_output_asked_for(workspace, run_cli, planner_env):
    good = _answer("a warm fractal spiral in amber", "a fractal fern in copper light", "a golden mandelbrot coast")
    with FakeChatServer(answers=[good]) as server:
        planner_env(server.url)
        code, out, err = run_cli("--home", str(workspace.home), "plan", "Ruzgar", INTENT, "--count", "3")
    assert code == 0, err
    assert len(server.requests) == 1 and server.keys == ["sk-test"]
    body = server.requests[0]
    assert body["model"] == "local-model"
    schema = body["response_format"]["json_schema"]
    assert body["response_format"]["type"] == "json_schema" and schema["strict"] is True
    assert schema["schema"]["required"] == ["items"] and schema["schema"]["additionalProperties"] is False
    assert "human forms" in body["messages"][1]["content"]
    plan = json.loads((workspace.home / "prompts" / "ruzgar" / "plan.json").read_text())
    assert [item["prompt"] for item in plan["items"]] == [i["prompt"] for i in json.loads(good)["items"]]
    assert plan["method"]["name"] == "llm" and plan["method"]["attempts"] == 1
    assert plan["constraints"]["negative_prompt"].startswith("human forms, people")
    assert "diversity: mean pairwise similarity" in err


def test_invalid_answers_are_retried_then_refused_with_one_line(workspace, run_cli, planner_env):
    invalid = ["not json at all", _answer("only one"), _answer("a human form in fractal light", "b", "c")]
    with FakeChatServer(answers=invalid) as server:
        planner_env(server.url)
        code, out, err = run_cli("--home", str(workspace.home), "plan", "Ruzgar", INTENT, "--count", "3")
    assert code == 1
    assert err.count("\n") == 1 and "no valid plan in 3 attempts" in err and "Traceback" not in err
    assert len(server.requests) == 3
    # each retry carries the rejected answer and why it was rejected
    assert "invalid" in server.requests[1]["messages"][-1]["content"]
    assert server.requests[2]["messages"][-2] == {"role": "assistant", "content": invalid[1]}
    assert not (workspace.home / "prompts" / "ruzgar").exists()  # nothing written


def test_an_invalid_answer_then_a_valid_one_is_accepted_and_images_go_as_context(workspace, run_cli, planner_env):
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.render.requests import build_request
    from echo_os.render.scheduler import render_requests

    store = ArtifactStore(workspace)
    try:
        [card] = render_requests(workspace, [build_request(prompt="an earlier fractal", engine="draft", width=64,
                                                           height=64, seed=1, project="Ruzgar")],
                                 store=store).artifacts
    finally:
        store.close()
    answers = ["{\"items\": [{\"prompt\": 5}]}", _answer("amber fractal coastline", "copper fractal fern")]
    with FakeChatServer(answers=answers) as server:
        planner_env(server.url)
        code, out, err = run_cli("--home", str(workspace.home), "plan", "Ruzgar", INTENT, "--count", "2",
                                 "--context", card.id[:12], "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["method"]["attempts"] == 2
    content = server.requests[0]["messages"][1]["content"]
    assert content[1]["type"] == "image_url" and content[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert "an earlier fractal" in content[0]["text"]  # past work is shown so it is not repeated


def test_llm_method_without_configuration_is_a_one_line_usage_error(workspace, run_cli, monkeypatch):
    monkeypatch.delenv("ECHO_OS_PLANNER_URL", raising=False)
    monkeypatch.delenv("ECHO_OS_PLANNER_MODEL", raising=False)
    code, out, err = run_cli("--home", str(workspace.home), "plan", "Ruzgar", INTENT, "--method", "llm")
    assert code == 2 and "[planner]" in err and err.count("\n") == 1


def test_an_unreachable_endpoint_is_one_line(workspace, run_cli, planner_env):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    planner_env(f"http://127.0.0.1:{port}/v1")  # nothing listens there
    code, out, err = run_cli("--home", str(workspace.home), "plan", "Ruzgar", INTENT, "--count", "2")
    assert code == 1 and "cannot reach the planner endpoint" in err and err.count("\n") == 1


def test_an_llm_that_ignores_an_exclusion_is_corrected_and_off_topic_answers_are_asked_again(workspace, run_cli,
                                                                                             planner_env):
    off_topic = _answer("a warm fractal spiral in amber", "a red sports car on a motorway at noon")
    ignoring = _answer("a warm fractal spiral in amber, a human figure at its heart", "a copper fractal fern")
    with FakeChatServer(answers=[off_topic, ignoring]) as server:
        planner_env(server.url)
        code, out, err = run_cli("--home", str(workspace.home), "plan", "Ruzgar", INTENT, "--count", "2", "--json")
    assert code == 0, err
    assert len(server.requests) == 2 and "off the topic" in server.requests[1]["messages"][-1]["content"]
    plan = json.loads(out)
    assert [item["prompt"] for item in plan["items"]] == ["a warm fractal spiral in amber", "a copper fractal fern"]
    assert plan["method"]["attempts"] == 2
    assert "corrected" in plan["method"]["corrections"][0] and plan["notes"] == plan["method"]["corrections"]
    assert "note: the model named an excluded thing" in err


def test_a_hostile_planner_cannot_reach_the_terminal_or_the_prompts(workspace, run_cli, planner_env):
    """Red-team findings: `plan` printed a malicious planner's OSC/BEL escapes raw and wrote prompts with
    control characters that `batch` then refused. Such an answer is invalid (retried, then one line);
    nothing it holds reaches the terminal or the prompt files."""
    evil = _answer("a fractal \x1b]0;pwned\x07 spiral", "a copper fern\x07", "a golden coast\x1b[2J")
    with FakeChatServer(answers=[evil]) as server:
        planner_env(server.url)
        code, out, err = run_cli("--home", str(workspace.home), "plan", "Ruzgar", INTENT, "--count", "3")
    assert code == 1 and "control character" in err and len(server.requests) == 3, err
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert not (workspace.home / "prompts" / "ruzgar").exists()


@pytest.mark.parametrize("raw, said", [
    ({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": []}, "choices[0]"),
    ({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
      "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": ["a"]}}]},
     "choices[0]"),
    ("<html>gateway</html>", "not a chat completion"),
    ({"choices": "nope"}, "choices[0]"),
    ("", "not a chat completion"),
])
def test_a_malformed_planner_answer_is_one_line_naming_the_server(workspace, run_cli, planner_env, raw, said):
    """Red-team finding: malformed answers surfaced as Python exception names. Each is one line naming the
    endpoint and what was wrong."""
    with FakeChatServer(answers=[_answer("a")], raw=[raw] * 3) as server:
        planner_env(server.url)
        code, out, err = run_cli("--home", str(workspace.home), "plan", "Ruzgar", INTENT, "--count", "3")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert server.url in err and said in err and "Traceback" not in err, err
    for name in ("IndexError", "TypeError", "AttributeError", "KeyError", "JSONDecodeError"):
        assert name not in err, err
