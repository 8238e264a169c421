"""What comes back from the OpenAI Images API, judged for the `openai` engine (engines/openai_images.py):
the answer checked before it is used or cached (parse_answer), an error sorted into retried or not and
named in one line (is_retryable, error_code, describe), the wait a server asks for (retry_after_seconds),
and the response cache the checked answers are kept in (ResponseCache).

Nothing here sends a request; `openai` is imported only to sort its exception classes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import TYPE_CHECKING, Any, TypedDict

from echo_os.engines.inputs import decode_received_image

if TYPE_CHECKING:
    from pathlib import Path


class MalformedResponse(Exception):
    """A 2xx answer that is not the Images API's JSON (retried like a server error)."""


# The longest wait a server may ask for (Retry-After) before a retry: a hostile or broken server's
# "Retry-After: 1e12" (or inf, or a date in the year 3000) would otherwise hang the render for ever.
MAX_RETRY_AFTER_S = 300.0


def retry_after_seconds(error: BaseException) -> float | None:
    """What the server asked to wait: `retry-after-ms`, else `Retry-After` (seconds or an HTTP date),
    bounded to 0..MAX_RETRY_AFTER_S (NaN counts as not asked)."""
    asked = _retry_after_asked(error)
    if asked is None or asked != asked:  # NaN
        return None
    return min(max(0.0, asked), MAX_RETRY_AFTER_S)


def _retry_after_asked(error: BaseException) -> float | None:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms") is not None:
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            from email.utils import parsedate_to_datetime

            return parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError, OverflowError):
        return None


def error_code(error: BaseException) -> str | None:
    """The `error.code` (else `error.type`) of an API error body."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner.get("code") or inner.get("type")
    return getattr(error, "code", None)


def is_retryable(error: BaseException) -> bool:
    import openai

    if isinstance(error, MalformedResponse):
        return True
    if isinstance(error, openai.APIConnectionError):  # timeouts and dropped connections
        return True
    if isinstance(error, openai.APIStatusError):
        if error.status_code == 429:
            return error_code(error) != "insufficient_quota"
        return error.status_code in (408, 409) or error.status_code >= 500
    return False


def describe(error: BaseException) -> str:
    import openai

    if isinstance(error, openai.APIStatusError):
        body = getattr(error, "body", None)
        inner = body.get("error", body) if isinstance(body, dict) else None
        message = inner.get("message") if isinstance(inner, dict) else None
        code = error_code(error)
        return f"{error.status_code}{f' {code}' if code else ''}: {message or error.message}".strip()
    if isinstance(error, openai.APITimeoutError):
        return "the request timed out"
    if isinstance(error, openai.APIConnectionError):
        return f"connection failed ({error.__cause__ or error})"
    return str(error)


def _kind(value: object) -> str:
    """What a JSON value is, in JSON's words (an answer's wrong shape is named this way, not in Python's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def parse_answer(content: bytes, count: int) -> dict[str, Any]:
    """The Images API's JSON answer in `content`, checked: an object whose `data` is an array of `count`
    objects, each with a `b64_json` string that decodes to an image (decoded whole, so a bad image is never
    cached). MalformedResponse with one line saying what was wrong otherwise, never a Python error's name:
    a body that is not JSON (or nested too deep to read), another JSON shape, a missing field, an image
    that is not base64 or not an image. A `url` item (dall-e's) is named as such: echo-os asks for none."""
    try:
        response = json.loads(content)
    except RecursionError:  # [[[[... nested deeper than the parser goes
        raise MalformedResponse(f"a malformed answer (JSON nested too deep to read, {len(content):,} "
                                 "bytes)") from None
    except ValueError as error:  # not JSON, not UTF-8, or a number too long to read
        reason = "a number too long" if "digits" in str(error) else "not JSON"
        raise MalformedResponse(f"a malformed answer ({reason}: {len(content):,} bytes starting "
                                 f"{content[:24]!r})") from None
    if not isinstance(response, dict):
        raise MalformedResponse(f"a malformed answer (a JSON {_kind(response).split()[-1]} instead of an "
                                 "object with `data`)")
    if "data" not in response:
        raise MalformedResponse(f"a malformed answer (no `data` field; fields: "
                                 f"{', '.join(sorted(map(str, response))[:8])[:120] or 'none'})")
    data = response["data"]
    if not isinstance(data, list):
        raise MalformedResponse(f"a malformed answer (`data` is {_kind(data)}, not an array of images)")
    if len(data) != count:
        raise MalformedResponse(f"a malformed answer ({len(data)} image(s) in `data`, {count} asked)")
    for number, item in enumerate(data, 1):
        if not isinstance(item, dict):
            raise MalformedResponse(f"a malformed answer (image {number} of `data` is {_kind(item)}, not an "
                                     "object)")
        encoded = item.get("b64_json")
        if not isinstance(encoded, str) or not encoded:
            has_url = isinstance(item.get("url"), str)
            raise MalformedResponse(f"a malformed answer (image {number} has "
                                     f"{'a url but ' if has_url else ''}no b64_json string)")
        try:
            decoded = base64.b64decode(encoded, validate=True)
        except ValueError:  # binascii.Error
            raise MalformedResponse(f"a malformed answer (image {number}'s b64_json is not base64)") from None
        try:  # checked before the answer may be cached: a bad image is never kept
            decode_received_image(decoded)
        except ValueError as error:
            raise MalformedResponse(f"a malformed answer (image {number} is {error})") from None
    return response


class CacheEntry(TypedDict):
    """One answer as the response cache keeps it: the API's JSON body and the request id it came with."""

    response: dict[str, Any]  # the Images API's JSON (data[].b64_json, created, usage, ...), checked when made
    request_id: str | None


class ResponseCache:
    """Responses on disk, one JSON file per request key (the request body plus the server's URL)."""

    def __init__(self, folder: "Path"):
        self.folder = folder

    @staticmethod
    def key(base_url: str, body: dict[str, Any], seeds: list[int]) -> str:
        """The seeds are echo-os's (never sent): they tell apart the images of one render, which are
        otherwise the same request, so image 2 of `--count 2` is not image 1 from the cache."""
        canonical = json.dumps({"base_url": base_url, "body": body, "seeds": seeds}, sort_keys=True,
                               separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def get(self, key: str) -> CacheEntry | None:
        path = self.folder / f"{key}.json"
        try:
            entry: CacheEntry = json.loads(path.read_text(encoding="utf-8"))
            return entry
        except (OSError, ValueError):
            return None

    def put(self, key: str, entry: CacheEntry) -> None:
        """Written beside, then renamed into place: a reader sees a whole entry or none. Not fsynced
        (echo_os.atomic does): an entry lost to a power cut is only a cache miss, and the fsync cost
        5-10 ms an image on this machine (benchmarks/RESULTS.md, "openai engine")."""
        import os
        import uuid

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{key}.json"
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_text(json.dumps(entry), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
