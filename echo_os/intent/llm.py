"""The opt-in language-model planner: any OpenAI-compatible chat endpoint (a hosted API, or a local
llama.cpp / Ollama / vLLM server that speaks the same API).

Configured by the user, never by default (like the hosted engine): the `[planner]` table of the
workspace's echo-os.toml, or the environment, which wins:

    [planner]
    url = "http://127.0.0.1:8080/v1"   # ECHO_OS_PLANNER_URL: the API base, as the openai client takes it
    model = "qwen2.5-7b-instruct"       # ECHO_OS_PLANNER_MODEL
    api_key_env = "OPENAI_API_KEY"      # the variable holding the key (ECHO_OS_PLANNER_API_KEY wins)
    attempts = 3                        # answers that fail validation are asked for again, then refused

The request asks for structured output (`response_format` of type json_schema, strict) with the schema
of PlanAnswer; every answer is validated with pydantic whatever the server claims, so a server that
ignores the schema is caught. An invalid answer is sent back with the validation error and asked again;
after `attempts` the plan is refused with one line. Images of chosen past artifacts can go along as
image_url content parts (data: URLs, so nothing but the endpoint is contacted) for models that take images.
The `openai` client is used (pip install 'echo-os[llm]'): it is the reference client of this API.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from echo_os.errors import EchoError, UsageError
from echo_os.intent.intent import Intent
from echo_os.render.text import MAX_PROMPT_CHARS, check_prompt_text
from echo_os.settings import Settings

CONFIG_NAME = "echo-os.toml"
DEFAULT_ATTEMPTS = 3


class PlannedPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=3, max_length=600, description="A complete image prompt, positive only")


class PlanAnswer(BaseModel):
    """What the model must answer: exactly the number of prompts asked for."""

    model_config = ConfigDict(extra="forbid")

    items: list[PlannedPrompt]


class PlannerRefused(EchoError):
    """The model's answers did not validate after every attempt."""

    exit_code = 1


@dataclass(frozen=True)
class PlannerConfig:
    url: str
    model: str
    api_key: str
    attempts: int = DEFAULT_ATTEMPTS
    timeout_s: float = 120.0


def load_planner_config(settings: Settings, env: dict[str, str] | None = None) -> PlannerConfig | None:
    """The configured endpoint, or None when the user configured none (the offline planner then runs)."""
    env = dict(os.environ) if env is None else env
    table: dict = {}
    path = settings.home / CONFIG_NAME
    if path.is_file():
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8")).get("planner", {})
        except tomllib.TOMLDecodeError as error:
            raise UsageError(f"{path}: {error}; fix the TOML.") from None
    url = env.get("ECHO_OS_PLANNER_URL") or table.get("url")
    model = env.get("ECHO_OS_PLANNER_MODEL") or table.get("model")
    if not url and not model:
        return None
    if not url or not model:
        missing = "url (ECHO_OS_PLANNER_URL)" if not url else "model (ECHO_OS_PLANNER_MODEL)"
        raise UsageError(f"the language-model planner needs a {missing} as well; see docs/plan.md.")
    key = env.get("ECHO_OS_PLANNER_API_KEY") or env.get(str(table.get("api_key_env", "OPENAI_API_KEY")), "")
    attempts = int(table.get("attempts", DEFAULT_ATTEMPTS))
    if not 1 <= attempts <= 10:
        raise UsageError(f"{path}: [planner] attempts must be 1-10, got {attempts}.")
    # Local servers take any key; the openai client insists on one.
    return PlannerConfig(url=str(url), model=str(model), api_key=key or "not-needed", attempts=attempts,
                         timeout_s=float(table.get("timeout_s", 120.0)))


def answer_schema() -> dict:
    schema = PlanAnswer.model_json_schema()
    return schema


def _image_part(path: Path) -> dict:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


def build_messages(intent: Intent, count: int, past_prompts: list[str], images: list[Path]) -> list[dict]:
    system = ("You plan image prompts for Stable Diffusion XL. Answer with JSON only, matching the schema. "
              "Each prompt is positive only: never mention the excluded things; they go to the negative "
              "prompt. Make the prompts differ from each other and from the past prompts.")
    lines = [f"Intent: {intent.theme or intent.text}", f"Number of prompts: exactly {count}."]
    if intent.exclusions:
        lines.append(f"Excluded (do not mention): {intent.negative_prompt}")
    if past_prompts:
        lines.append("Past prompts of this project (do not repeat them):")
        lines += [f"- {prompt}" for prompt in past_prompts]
    text = "\n".join(lines)
    content: list[dict] | str = text
    if images:
        content = [{"type": "text", "text": text + "\nImages of chosen past work follow."},
                   *(_image_part(path) for path in images)]
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


RELEVANCE_FLOOR = 0.2  # an answer's prompt this far from the intent (MiniLM cosine) is off topic


@dataclass(frozen=True)
class LLMAnswer:
    prompts: list[str]
    attempts: int
    notes: list[str]  # the corrections made to the model's answer (exclusions it ignored)


def correct_exclusions(prompt: str, intent: Intent) -> str:
    """The prompt without its clauses that name an excluded thing (by word or by the widened concept)."""
    clauses = [c.strip() for c in prompt.split(",")]
    return ", ".join(c for c in clauses if c and not intent.mentions_excluded(c))


def _problems(answer: str, count: int, intent: Intent, embed=None) -> tuple[PlanAnswer | None, str | None]:
    try:
        parsed = PlanAnswer.model_validate_json(answer)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "answer"
        return None, f"{where}: {first.get('msg')}"
    prompts = [item.prompt.strip() for item in parsed.items]
    for number, prompt in enumerate(prompts, start=1):  # the rules of prompt text, before anything prints it
        if len(prompt) > MAX_PROMPT_CHARS:
            return None, f"item {number} is {len(prompt):,} characters; a prompt is at most {MAX_PROMPT_CHARS:,}"
        try:
            check_prompt_text(prompt)
        except ValueError as error:
            return None, f"item {number} {error}"
    if len(prompts) != count:
        return None, f"expected exactly {count} items, got {len(prompts)}"
    if len(set(p.casefold() for p in prompts)) != len(prompts):
        return None, "two items are the same prompt"
    for prompt in prompts:
        if intent.mentions_excluded(prompt) and len(correct_exclusions(prompt, intent)) < 3:
            return None, f"the prompt {prompt!r} is about an excluded thing ({', '.join(intent.exclusions)})"
    if embed is not None:
        vectors = embed(prompts)
        query = embed([intent.english or intent.text])[0]
        far = [p for p, v in zip(prompts, vectors) if float(v @ query) < RELEVANCE_FLOOR]
        if far:
            return None, (f"the prompt {far[0]!r} is off the topic {intent.theme!r}; every prompt must show "
                          "what the intent asks for")
    return parsed, None


def _content(completion: object) -> str | None:
    """choices[0].message.content of a chat completion as text ("" for none), or None when the answer
    has no such field (a malformed or hostile server)."""
    try:
        content = completion.choices[0].message.content  # type: ignore[attr-defined]
    except (AttributeError, IndexError, TypeError, KeyError):
        return None
    if content is None:
        return ""
    return content if isinstance(content, str) else None


def _printable(text: str) -> str:
    """A server's words for one error line: control characters (a terminal's escapes) shown as ?."""
    return "".join(c if c.isprintable() else "?" for c in text)


def plan_with_llm(config: PlannerConfig, intent: Intent, *, count: int, past_prompts: list[str],
                  images: list[Path], embed=None) -> LLMAnswer:
    """The model's prompts, checked like the offline planner's: relevance to the intent (MiniLM, with
    `embed`) and exclusions. An off-topic or malformed answer is asked again; a prompt that names an
    excluded thing is corrected (the clause dropped, the plan notes it). Raises PlannerRefused after
    config.attempts invalid answers."""
    try:
        import openai
    except ImportError:
        raise UsageError("the language-model planner needs the openai package: pip install 'echo-os[llm]'.") from None

    client = openai.OpenAI(base_url=config.url, api_key=config.api_key, timeout=config.timeout_s, max_retries=2)
    messages = build_messages(intent, count, past_prompts, images)
    response_format = {"type": "json_schema",
                       "json_schema": {"name": "plan", "strict": True, "schema": answer_schema()}}
    problem = None
    for attempt in range(1, config.attempts + 1):
        try:
            # The messages are plain dicts, not the SDK's TypedDicts: the server reads the same JSON.
            completion = client.chat.completions.create(  # type: ignore[call-overload]
                model=config.model, messages=messages, response_format=response_format, temperature=0.9)
        except openai.APIConnectionError:
            raise EchoError(f"cannot reach the planner endpoint {config.url}; is the server running?") from None
        except openai.APIStatusError as error:
            raise EchoError(f"the planner endpoint {config.url} answered HTTP {error.status_code}: "
                            f"{_printable(str(error.message))[:200]}") from None
        except (openai.APIError, ValueError) as error:  # an answer the client cannot read (not JSON, ...)
            raise EchoError(f"the planner endpoint {config.url} sent an answer that is not a chat completion "
                            f"({_printable(str(error))[:120]})") from None
        answer = _content(completion)
        if answer is None:
            raise EchoError(f"the planner endpoint {config.url} sent a chat completion without "
                            "choices[0].message.content as text")
        parsed, problem = _problems(answer, count, intent, embed)
        if parsed is not None:
            prompts, notes = [], []
            for item in parsed.items:
                prompt = item.prompt.strip()
                corrected = correct_exclusions(prompt, intent)
                if corrected != prompt:
                    notes.append(f"the model named an excluded thing ({', '.join(intent.exclusions)}); "
                                 f"corrected {prompt!r} -> {corrected!r}")
                prompts.append(corrected)
            return LLMAnswer(prompts=prompts, attempts=attempt, notes=notes)
        messages = messages + [{"role": "assistant", "content": answer},
                               {"role": "user", "content": f"That answer is invalid ({problem}). "
                                                           "Answer again with JSON matching the schema."}]
    raise PlannerRefused(f"the planner model gave no valid plan in {config.attempts} attempts "
                         f"(last problem: {problem}); try again, another model, or the offline planner "
                         "(--method offline).")


def dump_schema() -> str:
    return json.dumps(answer_schema(), indent=2)
