"""A small, thread-safe, retrying client for OpenAI-compatible chat servers.

:class:`ChatClient` sends ``POST {base_url}/chat/completions`` with the standard library only
(``urllib.request``) and returns the first choice's text (:meth:`ChatClient.chat`) or the
parsed response (:meth:`ChatClient.chat_full`). It speaks the plain OpenAI chat-completions
schema, so any compatible server can be the other end (OpenAI, vLLM, ...); the tests run it
against this project's own server (:mod:`reasondistill.api.serve`) and a fault-injecting one.
The LLM judges and the API-teacher pipeline use it.

``base_url``
------------
The API root, as in the OpenAI SDK: requests go to ``base_url + "/chat/completions"`` and
``base_url + "/models"``. It must be ``http(s)://HOST[:PORT]/PATH`` with a non-empty ``PATH``
(normally ``/v1``; ``/api/v1`` or ``/v1beta/openai`` work too); trailing slashes are ignored.
A bare host (``http://127.0.0.1:8000``) and a URL that already ends in ``/chat/completions``
are refused with a ``ValueError`` that shows the corrected URL. Environment proxies
(``HTTPS_PROXY`` ...) are used, except for loopback hosts (``127.0.0.1``, ``localhost``, ``::1``).

Retry policy
------------
One call makes at most ``1 + max_retries`` HTTP attempts. An attempt *fails retryably* on:

- HTTP 429 (rate limited), 408 (request timeout) and any 5xx;
- a connection error (refused, reset, closed early, DNS failure) or a timeout: ``timeout`` is
  the socket timeout in seconds for connecting and for each read (not a total deadline);
- HTTP 2xx with a body that is not valid JSON, or (chat) one without a string
  ``choices[0].message.content``; (models) one without a ``data`` list.

Before retry ``k`` (``k = 1, 2, ...``) the client sleeps, through the injectable ``sleep``
function (default ``time.sleep``):

- the server's ``Retry-After`` (seconds, fractions accepted, or an HTTP date) or
  ``retry-after-ms`` header, when the failed response carried one, capped at ``max_backoff``;
- otherwise ``min(max_backoff, backoff * 2**(k-1))`` times a jitter factor drawn uniformly from
  ``[0.5, 1.0)`` (so concurrent callers spread out).

Any other status, i.e. 3xx (redirects are not followed: a POST must not silently turn into a
GET) and 4xx other than 408/429 (400, 401, 403, 404, 422 ...), and a TLS certificate failure are
*not retried*: :class:`APIError` is raised at once, carrying the server's error message
(``{"error": {"message": ...}}``) when it sent one. After the last attempt :class:`APIError` is
raised; its message names the URL, the HTTP status (or "no HTTP status" for timeouts and
connection errors), the number of attempts, the server's error message when the body had one
(else a short snippet of the body) and a tally of the earlier failures. ``APIError`` has the
fields ``url``, ``status``, ``attempts``, ``body`` (snippet) and ``retryable``.

Other behaviour
---------------
- The API key defaults to ``$OPENAI_API_KEY`` and is sent as ``Authorization: Bearer ...``
  (no header when there is none, fine for local servers). It is never printed or logged:
  ``repr`` masks it (at most its last 4 characters show) and error messages have it replaced
  by ``***``.
- One client may be shared by many threads; :meth:`ChatClient.map_chat` runs a batch with
  ``workers`` threads and puts each failure, as an :class:`APIError`, in its slot instead of
  raising.
- ``stats`` counts ``calls`` (chat/models calls), ``requests`` (HTTP attempts), ``retries`` and
  ``failures`` (calls that ended in :class:`APIError`).

Alternatives: any OpenAI-compatible server works as the other end; ``transformers serve``
serves Hugging Face models too, but it ignores ``logprobs`` (this project's server returns the
sampled tokens' log-probs when asked).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import os
import random
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

__all__ = ["APIError", "ChatClient", "RETRY_STATUSES"]

RETRY_STATUSES = frozenset({408, 429})
"""4xx statuses that are retried (besides every 5xx)."""

SNIPPET_CHARS = 300
"""Longest body snippet an :class:`APIError` message carries."""

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_CHAT_KEYWORDS = frozenset({"temperature", "max_tokens", "top_p", "stop", "seed", "extra_body"})


class APIError(RuntimeError):
    """A request to an OpenAI-compatible server failed (see the module docstring for when).

    Attributes: ``url``; ``status`` (the last HTTP status, or None for a timeout or connection
    error); ``attempts`` (HTTP attempts made); ``body`` (a snippet of the last response body);
    ``retryable`` (whether the last failure was of a retryable kind).
    """

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None, attempts: int = 0,
                 body: str = "", retryable: bool = False):
        super().__init__(message)
        self.url = url
        self.status = status
        self.attempts = attempts
        self.body = body
        self.retryable = retryable

    def __reduce__(self):  # keep the fields when pickled (e.g. sent between processes)
        return (_rebuild_api_error, (str(self), self.url, self.status, self.attempts, self.body, self.retryable))


def _rebuild_api_error(message, url, status, attempts, body, retryable):
    return APIError(message, url=url, status=status, attempts=attempts, body=body, retryable=retryable)


class _Failure:
    """One failed attempt."""

    __slots__ = ("kind", "status", "reason", "body", "retryable", "retry_after", "explained")

    def __init__(self, kind: str, status: int | None, reason: str, body: str = "", retryable: bool = True,
                 retry_after: float | None = None, explained: bool = False):
        self.kind, self.status, self.reason, self.body = kind, status, reason, body
        self.retryable, self.retry_after = retryable, retry_after
        self.explained = explained  # reason already holds the server's own error message


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the 3xx reaches the caller as an HTTPError


def _snippet(text: str, n: int = SNIPPET_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= n else text[:n] + f"... ({len(text)} chars)"


def _server_message(text: str) -> str | None:
    """The ``error.message`` (or a plain ``error``/``message`` string) of an error body."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    err = obj.get("error", obj)
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"]
    if isinstance(err, str):
        return err
    return obj.get("message") if isinstance(obj.get("message"), str) else None


def _retry_after(headers) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``Retry-After``), or None."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            ms = float(value)
            if math.isfinite(ms):
                return max(0.0, ms / 1000.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        s = float(value)
        return max(0.0, s) if math.isfinite(s) else None
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def check_base_url(base_url: str) -> str:
    """``base_url`` normalised (trailing slashes dropped), or a ``ValueError`` saying how to fix it."""
    if not isinstance(base_url, str) or not base_url.strip():
        raise ValueError(f"base_url must be a URL like http://127.0.0.1:8000/v1, got {base_url!r}")
    url = base_url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must start with http:// or https:// and name a host, like "
                         f"http://127.0.0.1:8000/v1; got {base_url!r}")
    if "@" in parts.netloc:
        raise ValueError("base_url must not contain credentials (user:password@); pass api_key or extra_headers")
    if parts.query or parts.fragment:
        raise ValueError(f"base_url must not have a query or fragment, got {base_url!r}")
    root = f"{parts.scheme}://{parts.netloc}"
    if not parts.path:
        raise ValueError(f"base_url {base_url!r} has no API path; OpenAI-compatible servers serve the API under a "
                         f"prefix, usually /v1: use {root}/v1")
    for tail in ("/chat/completions", "/completions"):
        if parts.path.endswith(tail):
            raise ValueError(f"base_url is the API root, without the endpoint: use {url[:-len(tail)]!r} "
                             f"instead of {base_url!r}")
    return url


def _check_messages(messages) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role': ..., 'content': ...}} dicts, "
                         f"got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise ValueError(f"messages[{i}] must be a dict with a string 'role' and a 'content', got {m!r:.120}")


def _chat_problem(obj) -> str | None:
    """Why ``obj`` is not a usable chat completion, or None."""
    if not isinstance(obj, dict):
        return "the JSON body is not an object"
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        return "the response has no choices"
    first = choices[0]
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        return "the response has no string choices[0].message.content"
    return None


def _models_problem(obj) -> str | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        return "the response has no 'data' list"
    return None


class ChatClient:
    """Client for one model on an OpenAI-compatible server (retry policy: module docstring).

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (rule: module docstring).
        model: the ``model`` field sent with every request.
        api_key: bearer token; default ``$OPENAI_API_KEY``; None/empty sends no Authorization.
        timeout: socket timeout in seconds (connect, and each read).
        max_retries: retries after the first attempt (at most ``1 + max_retries`` attempts).
        backoff, max_backoff: the exponential backoff's first step and cap, in seconds.
        extra_headers: sent with every request (e.g. ``{"OpenAI-Organization": ...}``).
        sleep: the function that waits between attempts (tests inject a fast or recording one).
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 5, backoff: float = 1.0, max_backoff: float = 30.0,
                 extra_headers: dict[str, str] | None = None, sleep: Callable[[float], Any] | None = None):
        self.base_url = check_base_url(base_url)
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if backoff < 0 or max_backoff < 0:
            raise ValueError(f"backoff and max_backoff must be >= 0, got {backoff!r}, {max_backoff!r}")
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.extra_headers = dict(extra_headers or {})
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._sleep = sleep if sleep is not None else time.sleep
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._stats = {"calls": 0, "requests": 0, "retries": 0, "failures": 0}
        handlers: list = [_NoRedirect()]
        if urllib.parse.urlsplit(self.base_url).hostname in _LOOPBACK:
            handlers.append(urllib.request.ProxyHandler({}))  # a local server is never behind a proxy
        self._opener = urllib.request.build_opener(*handlers)

    # -- bookkeeping --------------------------------------------------------------------
    def __repr__(self) -> str:
        key = self._api_key
        masked = None if not key else ("***" + key[-4:] if len(key) >= 20 else "***")
        extra = f", extra_headers={sorted(self.extra_headers)}" if self.extra_headers else ""
        return (f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, api_key={masked!r}, "
                f"timeout={self.timeout:g}, max_retries={self.max_retries}{extra})")

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot: ``calls``, ``requests`` (HTTP attempts), ``retries``, ``failures``."""
        with self._lock:
            return dict(self._stats)

    def reset_stats(self) -> None:
        with self._lock:
            for k in self._stats:
                self._stats[k] = 0

    def _count(self, key: str) -> None:
        with self._lock:
            self._stats[key] += 1

    def _redact(self, text: str) -> str:
        key = self._api_key
        return text.replace(key, "***") if key and len(key) >= 4 else text

    # -- HTTP ---------------------------------------------------------------------------
    def _headers(self, has_body: bool) -> dict[str, str]:
        from .. import __version__

        headers = {"Accept": "application/json", "User-Agent": f"reasondistill/{__version__}"}
        if has_body:
            headers["Content-Type"] = "application/json"
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        headers.update(self.extra_headers)
        return headers

    def _attempt(self, method: str, url: str, data: bytes | None, problem: Callable[[Any], str | None]):
        """One HTTP attempt: ``(parsed JSON, None)`` or ``(None, _Failure)``."""
        req = urllib.request.Request(url, data=data, method=method, headers=self._headers(data is not None))
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                status = resp.status
                raw = resp.read()
        except urllib.error.HTTPError as e:
            try:
                raw = e.read()
            except (OSError, http.client.HTTPException):
                raw = b""
            finally:
                e.close()
            text = raw.decode("utf-8", "replace")
            message = _server_message(text)
            if 300 <= e.code < 400:
                location = e.headers.get("Location") if e.headers else None
                message = f"redirected to {location!r}; use the final URL as base_url" if location else message
            retryable = e.code in RETRY_STATUSES or e.code >= 500
            reason = f"HTTP {e.code}" + (f": {message}" if message else (f" {e.reason}" if e.reason else ""))
            return None, _Failure(f"HTTP {e.code}", e.code, reason, text, retryable,
                                  _retry_after(e.headers) if retryable else None, explained=bool(message))
        except TimeoutError:
            return None, _Failure("timeout", None, f"timed out after {self.timeout:g} s (no HTTP status)")
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                return None, _Failure("timeout", None, f"timed out after {self.timeout:g} s (no HTTP status)")
            if isinstance(e.reason, ssl.SSLCertVerificationError):
                return None, _Failure("TLS error", None, f"TLS certificate check failed: {e.reason}", retryable=False)
            return None, _Failure("connection error", None, f"connection error (no HTTP status): {e.reason}")
        except (http.client.HTTPException, OSError) as e:
            return None, _Failure("connection error", None,
                                  f"connection error (no HTTP status): {type(e).__name__}: {e}")
        text = raw.decode("utf-8", "replace")
        try:
            obj = json.loads(text)
        except ValueError as e:
            return None, _Failure("invalid JSON", status, f"HTTP {status} but the body is not valid JSON ({e})", text)
        why = problem(obj)
        if why is not None:
            return None, _Failure("incomplete response", status, f"HTTP {status} but {why}", text)
        return obj, None

    def _delay(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.max_backoff, retry_after)
        step = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return step * (0.5 + 0.5 * self._rng.random())

    def _request(self, method: str, path: str, payload: dict | None, problem) -> dict:
        url = self.base_url + path
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        self._count("calls")
        failures: list[_Failure] = []
        total = self.max_retries + 1
        for attempt in range(1, total + 1):
            if attempt > 1:
                self._count("retries")
                self._sleep(self._delay(attempt - 1, failures[-1].retry_after))
            self._count("requests")
            obj, failure = self._attempt(method, url, data, problem)
            if failure is None:
                return obj
            failures.append(failure)
            if not failure.retryable or attempt == total:
                break
        self._count("failures")
        raise self._error(method, url, failures)

    def _error(self, method: str, url: str, failures: list[_Failure]) -> APIError:
        last, n = failures[-1], len(failures)
        body = _snippet(self._redact(last.body))
        reason = self._redact(last.reason)
        attempts = f"{n} attempt" + ("s" if n != 1 else "")
        if not last.retryable:
            msg = f"{method} {url}: {reason} (not retryable; {attempts})"
        else:
            msg = f"{method} {url}: gave up after {attempts} (1 + max_retries={self.max_retries}); last error: {reason}"
        if body and not last.explained:  # the server's message, when it sent one, says it better
            msg += f"; body: {body!r}"
        if n > 1:
            tally = Counter(f.kind for f in failures[:-1])
            msg += "; earlier failures: " + ", ".join(f"{k} x{c}" for k, c in tally.items())
        return APIError(msg, url=url, status=last.status, attempts=n, body=body, retryable=last.retryable)

    # -- public API -----------------------------------------------------------------------
    def chat_full(self, messages: list[dict], *, temperature: float | None = 0.0, max_tokens: int | None = 512,
                  top_p: float | None = 1.0, stop: str | list[str] | None = None, seed: int | None = None,
                  extra_body: dict | None = None) -> dict:
        """The parsed response of one chat completion (retried per the module docstring).

        ``temperature``, ``max_tokens`` or ``top_p`` set to None are left out of the request
        (some models refuse them); ``extra_body`` adds or overrides request fields (e.g.
        ``{"logprobs": True}`` or ``{"max_completion_tokens": 1024}``). Raises :class:`APIError`.
        """
        _check_messages(messages)
        payload: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        for name, value in (("temperature", temperature), ("max_tokens", max_tokens), ("top_p", top_p),
                            ("stop", stop), ("seed", seed)):
            if value is not None:
                payload[name] = value
        if extra_body:
            payload.update(extra_body)
        return self._request("POST", "/chat/completions", payload, _chat_problem)

    def chat(self, messages: list[dict], *, temperature: float | None = 0.0, max_tokens: int | None = 512,
             top_p: float | None = 1.0, stop: str | list[str] | None = None, seed: int | None = None,
             extra_body: dict | None = None) -> str:
        """The first choice's ``message.content`` (see :meth:`chat_full`)."""
        response = self.chat_full(messages, temperature=temperature, max_tokens=max_tokens, top_p=top_p,
                                  stop=stop, seed=seed, extra_body=extra_body)
        return response["choices"][0]["message"]["content"]

    def list_models(self) -> list[str]:
        """The model ids of ``GET {base_url}/models``."""
        obj = self._request("GET", "/models", None, _models_problem)
        return [m["id"] for m in obj["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def map_chat(self, message_lists, workers: int = 4, **kw) -> list[str | APIError]:
        """:meth:`chat` over many conversations with at most ``workers`` requests in flight.

        Returns one entry per conversation, in order: the text, or the :class:`APIError` that
        ended it (any other exception, e.g. a malformed conversation, is wrapped in an
        ``APIError`` with ``attempts=0`` and chained). Never raises for a single failure.
        ``kw`` are :meth:`chat`'s keyword arguments.
        """
        unknown = set(kw) - _CHAT_KEYWORDS
        if unknown:
            raise TypeError(f"map_chat got unknown keyword(s) {sorted(unknown)}; valid: {sorted(_CHAT_KEYWORDS)}")
        if not (isinstance(workers, int) and workers >= 1):
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        items = list(message_lists)
        results: list[str | APIError | None] = [None] * len(items)

        def one(i: int) -> None:
            try:
                results[i] = self.chat(items[i], **kw)
            except APIError as e:
                results[i] = e
            except Exception as e:  # noqa: BLE001 - one bad conversation must not sink the batch
                err = APIError(f"conversation {i} was not sent: {type(e).__name__}: {e}",
                               url=self.base_url + "/chat/completions", attempts=0)
                err.__cause__ = e
                results[i] = err

        if items:
            with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="chat") as pool:
                list(pool.map(one, range(len(items))))
        return results  # type: ignore[return-value]
