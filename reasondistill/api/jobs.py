"""Resumable, exactly-once API jobs: one mechanism for ``generate`` (teacher traces) and ``judge``.

A *job* sends one chat request per item (a bank problem, a trace to judge) to an
OpenAI-compatible endpoint and records one JSON line per outcome in an append-only file:

- a *result line*: the item's ``id`` and what the job made of the response (no ``error`` key);
- an *error line*: ``{"id", "error", "error_type", "attempts", "time", ...}`` when the request
  failed after its retries, or its response could not be used (a malformed verdict).

Guarantees (tested with a real subprocess killed by SIGKILL):

- each line is written with one ``write`` and flushed at once, right after its response, by
  the thread that received it; a kill (SIGKILL included) loses at most the requests in flight.
  The kernel keeps what was flushed when a process dies; ``fsync=True`` also survives a power
  cut, at a cost per line. A line a kill cut in half is removed on the next start (it is at the
  end, where the file is truncated back to the last newline) and counted as ``dropped_partial``.
- a rerun reads the file first: an id with a result line is skipped (never requested again), an
  id whose lines are only error lines is requested again (``retried``). An id therefore has at
  most one result line, after any number of error lines, and no problem is paid for twice
  beyond the requests in flight when a run died.
- two runs on one file at once are refused: the file is locked (``fcntl.flock``) while a job
  writes to it.
- the job's exit status (:attr:`JobReport.exit_code`) is non-zero while some selected id has no
  result line.

Requests go through the ``openai`` SDK (:class:`ChatRequester`): its retries with exponential
backoff and jitter, its ``Retry-After`` / ``retry-after-ms`` handling, its timeouts and typed
errors. Measured against a scripted server (tests/fault_server.py), the SDK does not retry a
``200`` whose body is not JSON, is cut short inside a JSON value, or has no
``choices[0].message.content`` (it raises ``JSONDecodeError`` / ``IndexError`` / returns
``None``), which ``api/client.py`` retries; :class:`ChatRequester` retries those itself, inside
the same budget: one item makes at most ``1 + max_retries`` HTTP attempts in all. Every HTTP
attempt (the SDK's retries included) is counted through an ``httpx`` request hook, in the
thread that makes it, so the counts match what the server saw; the same hook applies the
optional requests-per-minute and tokens-per-minute limits to every attempt.

The API key is passed in, never printed or written: error messages have it replaced by ``***``.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import random
import sys
import threading
import time
import urllib.parse
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..data.records import DataError, iter_json_objects
from .client import check_base_url

__all__ = [
    "ChatRequester",
    "ChatResult",
    "ItemFailed",
    "JobLog",
    "JobReport",
    "RateLimiter",
    "RequestFailed",
    "read_results",
    "run_job",
]

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
SNIPPET_CHARS = 300


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# the append-only result file
# --------------------------------------------------------------------------------------------
class JobLog:
    """The append-only JSON Lines file of one job, opened for resuming.

    After :meth:`open`: ``done`` (id -> its result line), ``failed`` (id -> its last error
    line, for ids without a result), ``error_lines``, ``bad_lines`` (``(where, message)`` of
    lines that are not JSON objects with an ``id``), ``duplicate_results`` (ids found with more
    than one result line: only possible if the file was edited by hand; the first one counts)
    and ``dropped_partial`` (bytes of a cut-off last line removed).
    """

    def __init__(self, path: str | os.PathLike, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        self.done: dict[str, dict] = {}
        self.failed: dict[str, dict] = {}
        self.error_lines = 0
        self.bad_lines: list[tuple[str, str]] = []
        self.duplicate_results: list[str] = []
        self.dropped_partial = 0
        self._fh = None
        self._lock = threading.Lock()

    def open(self) -> "JobLog":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+b")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise DataError(f"{self.path} is being written by another run (it is locked); wait for it to finish "
                            f"or stop it first") from None
        self._repair(fh)
        self._read()
        self._fh = fh
        return self

    def _repair(self, fh) -> None:
        """Truncate a last line a kill cut short (no newline at the end of the file)."""
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        pos, chunk = size, 65536
        cut = 0
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            data = fh.read(pos - start)
            nl = data.rfind(b"\n")
            if nl >= 0:
                cut = start + nl + 1
                break
            pos = start
        fh.truncate(cut)
        fh.flush()
        self.dropped_partial = size - cut

    def _read(self) -> None:
        errors: list = []
        for where, _, row in iter_json_objects(self.path, errors=errors):
            rid = row.get("id")
            if not isinstance(rid, str) or not rid:
                self.bad_lines.append((where, "no string 'id' field"))
                continue
            if "error" in row:
                self.error_lines += 1
                if rid not in self.done:
                    self.failed[rid] = row
                continue
            if rid in self.done:
                self.duplicate_results.append(rid)
                continue
            self.done[rid] = row
            self.failed.pop(rid, None)
        self.bad_lines.extend((w, m) for w, _, m in errors)

    def append(self, record: dict) -> None:
        """Write one line (one ``write``, then flush; ``fsync`` when asked), thread-safe."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            assert self._fh is not None, "JobLog.open() first"
            self._fh.write(data)
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            finally:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> "JobLog":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def read_results(path: str | os.PathLike) -> tuple[list[dict], dict]:
    """The result lines of a job file (one per id, file order; error lines and bad lines
    skipped) and counts of what was skipped: ``{"error_lines", "failed_ids", "bad_lines"}``.
    The reader ``judge`` uses for traces and ``filter`` for verdicts."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    log = JobLog(path)
    log._read()
    return list(log.done.values()), {"error_lines": log.error_lines, "failed_ids": len(log.failed),
                                     "bad_lines": len(log.bad_lines)}


# --------------------------------------------------------------------------------------------
# rate limits
# --------------------------------------------------------------------------------------------
class RateLimiter:
    """At most ``rpm`` requests and ``tpm`` tokens in any sliding ``window`` (60 s).

    :meth:`acquire` blocks until one more request of ``tokens`` estimated tokens fits; the
    returned slot's token count can be corrected with :meth:`settle` once the response's usage
    is known. A single request larger than ``tpm`` is let through when the window is empty
    (it could never fit otherwise). The token estimate is the caller's; :class:`ChatRequester`
    uses prompt characters / 4 plus ``max_tokens``, the amount providers reserve for a request.
    """

    def __init__(self, rpm: float | None = None, tpm: float | None = None, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Any] = time.sleep):
        for name, v in (("rpm", rpm), ("tpm", tpm)):
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be > 0 (or unset), got {v!r}")
        self.rpm, self.tpm, self.window = rpm, tpm, float(window)
        self._clock, self._sleep = clock, sleep
        self._slots: deque[list[float]] = deque()  # [time, tokens]
        self._tokens = 0.0
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def _purge(self, now: float) -> None:
        while self._slots and now - self._slots[0][0] >= self.window:
            self._tokens -= self._slots.popleft()[1]

    def acquire(self, tokens: float = 0.0) -> list[float] | None:
        if not self.active:
            return None
        while True:
            with self._lock:
                now = self._clock()
                self._purge(now)
                fits_r = self.rpm is None or len(self._slots) < self.rpm
                fits_t = self.tpm is None or self._tokens + tokens <= self.tpm or not self._slots
                if fits_r and fits_t:
                    slot = [now, float(tokens)]
                    self._slots.append(slot)
                    self._tokens += tokens
                    return slot
                wait_s = self.window - (now - self._slots[0][0]) + 1e-3
            self._sleep(min(max(wait_s, 1e-3), 1.0))

    def settle(self, slot: list[float] | None, tokens: float) -> None:
        """Replace the slot's estimate by the tokens the request really used."""
        if slot is None:
            return
        with self._lock:
            if any(s is slot for s in self._slots):
                self._tokens += tokens - slot[1]
            slot[1] = float(tokens)


class _Cancelled(Exception):
    """The job is stopping (Ctrl-C): an item not yet sent is not sent."""


# --------------------------------------------------------------------------------------------
# requests through the openai SDK
# --------------------------------------------------------------------------------------------
@dataclass
class ChatResult:
    text: str
    finish_reason: str | None
    usage: dict
    """``prompt_tokens``, ``completion_tokens``, ``total_tokens`` (0 when the server sent none)."""
    attempts: int
    model: str | None


class RequestFailed(Exception):
    """A request that failed after its retries (or at once, when not retryable)."""

    def __init__(self, message: str, *, error_type: str, attempts: int, status: int | None = None):
        super().__init__(message)
        self.error_type, self.attempts, self.status = error_type, attempts, status


class ItemFailed(Exception):
    """An item whose response could not be used (e.g. a malformed verdict): becomes an error
    line with ``extra`` fields (e.g. the raw reply), and the item is retried by the next run."""

    def __init__(self, message: str, *, error_type: str, attempts: int, extra: dict | None = None):
        super().__init__(message)
        self.error_type, self.attempts, self.extra = error_type, attempts, dict(extra or {})


def _usage(obj: Any) -> dict:
    u = getattr(obj, "usage", None)
    out = {}
    for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
        v = getattr(u, k, None) if u is not None else None
        out[k] = int(v) if isinstance(v, (int, float)) else 0
    if not out["total_tokens"]:
        out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    return out


def _status_detail(e) -> str:
    """The server's own error message of an ``APIStatusError`` (else a snippet of its body)."""
    body = getattr(e, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"]
    if isinstance(err, dict) and isinstance(err.get("detail"), str):  # FastAPI servers (transformers serve)
        return err["detail"]
    if isinstance(err, str) and err:
        return err[:SNIPPET_CHARS]
    try:
        text = e.response.text.strip()
    except Exception:  # noqa: BLE001 - a streamed or closed body
        text = ""
    return text[:SNIPPET_CHARS] or str(getattr(e, "message", "")) or "no body"


class ChatRequester:
    """One model at an OpenAI-compatible endpoint, through the ``openai`` SDK (module docstring).

    Args:
        base_url: the API root, ``http(s)://HOST:PORT/v1`` (checked by ``api.client.check_base_url``).
        model: the ``model`` sent.
        api_key: the key (``None``: none; the SDK then sends the placeholder ``EMPTY``, which
            local servers ignore).
        timeout: seconds for connecting and for each read, per attempt (the SDK's ``timeout``).
        max_retries: retries after the first attempt, all kinds together (HTTP attempts <= 1 + it).
        concurrency: connections kept (the job's bound on requests in flight).
        rpm, tpm, window: optional rate limits (:class:`RateLimiter`), applied to every attempt.
        backoff: the first wait before retrying an unusable 200 (doubles, capped at 8 s, jittered);
            the SDK's own waits apply to everything else.
        extra_body: extra request fields (provider routing, ``chat_template_kwargs``, ...).
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 360.0,
                 max_retries: int = 5, concurrency: int = 8, rpm: float | None = None, tpm: float | None = None,
                 window: float = 60.0, backoff: float = 0.5, extra_body: dict | None = None,
                 sleep: Callable[[float], Any] = time.sleep):
        import openai

        self.base_url = check_base_url(base_url)
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.model, self.max_retries, self.backoff = model, max_retries, float(backoff)
        self.extra_body = dict(extra_body or {})
        self.limiter = RateLimiter(rpm, tpm, window)
        self.stop = threading.Event()
        self._key = api_key or None
        self._sleep = sleep
        self._local = threading.local()
        self._lock = threading.Lock()
        self._rng = random.Random()
        self.stats = {"calls": 0, "requests": 0, "failures": 0}
        loopback = urllib.parse.urlsplit(self.base_url).hostname in _LOOPBACK
        # the SDK's own HTTP client class (httpx or httpx2 by SDK version) with its defaults, plus
        # the hook that counts and rate-limits every attempt
        self._http = openai.DefaultHttpxClient(timeout=float(timeout), event_hooks={"request": [self._on_request]},
                                               trust_env=not loopback)  # a local server is never behind a proxy
        self._client = openai.OpenAI(base_url=self.base_url, api_key=self._key or "EMPTY", timeout=timeout,
                                     max_retries=max_retries, http_client=self._http)
        self._openai = openai

    def __repr__(self) -> str:
        return f"ChatRequester(base_url={self.base_url!r}, model={self.model!r}, api_key={'***' if self._key else None})"

    def close(self) -> None:
        self._http.close()

    # every HTTP attempt passes here, in the thread that makes it
    def _on_request(self, request) -> None:
        # never raises: an exception here would be retried (or wrapped) by the SDK
        slot = self.limiter.acquire(getattr(self._local, "estimate", 0.0))
        self._local.slot = slot
        self._local.attempts = getattr(self._local, "attempts", 0) + 1
        with self._lock:
            self.stats["requests"] += 1

    def redact(self, text: str) -> str:
        key = self._key
        return text.replace(key, "***") if key and len(key) >= 4 else text

    def _fail(self, message: str, error_type: str, status: int | None = None) -> RequestFailed:
        with self._lock:
            self.stats["failures"] += 1
        return RequestFailed(self.redact(message), error_type=error_type, attempts=self._local.attempts,
                             status=status)

    def chat(self, messages: list[dict], *, temperature: float | None = None, max_tokens: int | None = None,
             top_p: float | None = None, seed: int | None = None, response_format: dict | None = None) -> ChatResult:
        """One chat completion (module docstring for the retries). Raises :class:`RequestFailed`."""
        openai = self._openai
        self._local.attempts = 0
        chars = sum(len(str(m.get("content", ""))) for m in messages)
        self._local.estimate = math.ceil(chars / 4) + (max_tokens or 0)
        with self._lock:
            self.stats["calls"] += 1
        kw: dict[str, Any] = {"model": self.model, "messages": messages}
        for name, value in (("temperature", temperature), ("max_tokens", max_tokens), ("top_p", top_p),
                            ("seed", seed), ("response_format", response_format)):
            if value is not None:
                kw[name] = value
        if self.extra_body:
            kw["extra_body"] = self.extra_body
        unusable = 0
        while True:
            # what is left of the budget after the attempts so far (the unusable 200s)
            client = self._client.with_options(max_retries=self.max_retries - self._local.attempts)
            try:
                raw = client.chat.completions.with_raw_response.create(**kw)
            except openai.APIStatusError as e:
                raise self._fail(f"HTTP {e.status_code}: {_status_detail(e)} ({self._local.attempts} attempts)",
                                 "http_error", e.status_code) from None
            except openai.APITimeoutError:
                raise self._fail(f"timed out (no HTTP status) after {self._local.attempts} attempts",
                                 "timeout") from None
            except openai.APIConnectionError as e:
                cause = e.__cause__ or e.__context__
                detail = f"{type(cause).__name__}: {cause}" if cause else str(e)
                raise self._fail(f"connection error (no HTTP status) after {self._local.attempts} attempts: "
                                 f"{detail}", "connection_error") from None
            text = raw.http_response.text
            slot = getattr(self._local, "slot", None)
            problem = None
            try:
                resp = raw.parse()
                choice = resp.choices[0]
                content = choice.message.content
                if not isinstance(content, str):
                    problem = "the response has no string choices[0].message.content"
            except Exception as e:  # noqa: BLE001 - JSONDecodeError, IndexError, validation errors
                problem = f"HTTP {raw.http_response.status_code} but the body is not a usable chat completion " \
                          f"({type(e).__name__}: {str(e)[:120]})"
            if problem is None:
                usage = _usage(resp)
                self.limiter.settle(slot, usage["total_tokens"])
                return ChatResult(content, choice.finish_reason, usage, self._local.attempts, resp.model)
            snippet = text.strip()[:SNIPPET_CHARS]
            last_problem = f"{problem}; body: {snippet!r}"
            unusable += 1
            if self._local.attempts > self.max_retries or self.stop.is_set():
                raise self._fail(f"gave up after {self._local.attempts} attempts; last: {last_problem}",
                                 "invalid_response")
            step = min(8.0, self.backoff * 2 ** (unusable - 1))
            self._sleep(step * (0.5 + 0.5 * self._rng.random()))


# --------------------------------------------------------------------------------------------
# running a job
# --------------------------------------------------------------------------------------------
@dataclass
class JobReport:
    """What one run of a job did, and where the file stands."""

    name: str
    output: str
    selected: int = 0
    """Items the run was asked to cover."""
    done: int = 0
    """Result lines written by this run."""
    skipped: int = 0
    """Items that already had a result line (not requested)."""
    failed: int = 0
    """Error lines written by this run."""
    retried: int = 0
    """Items this run requested again because an earlier run had recorded them as failed."""
    calls: int = 0
    requests: int = 0
    """HTTP attempts, the SDK's retries included (what the server saw)."""
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
    remaining: int = 0
    """Selected items still without a result line after this run."""
    interrupted: bool = False
    dropped_partial: int = 0
    bad_lines: int = 0
    wall_seconds: float = 0.0
    errors: dict = field(default_factory=dict)
    """error_type -> count, this run."""

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.remaining else 0

    def line(self) -> str:
        u = self.usage
        text = (f"{self.name}: done {self.done}, skipped {self.skipped} (already done), failed {self.failed}, "
                f"retried {self.retried}; {self.remaining} of {self.selected} still without a result; "
                f"requests {self.requests} for {self.calls} items ({self.requests - self.calls} retries); "
                f"tokens: prompt {u['prompt_tokens']}, completion {u['completion_tokens']}, "
                f"total {u['total_tokens']}; {self.wall_seconds:.1f} s")
        if self.errors:
            text += "; errors: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.errors.items()))
        if self.interrupted:
            text += " (interrupted)"
        return text

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["exit_code"] = self.exit_code
        return d


def run_job(name: str, items: Sequence[dict], work: Callable[[dict, ChatRequester], dict],
            requester: ChatRequester, output: str | os.PathLike, *, concurrency: int = 8,
            progress: bool = True, fsync: bool = False, summary_path: str | os.PathLike | None = None,
            log: Callable[[str], None] | None = None) -> JobReport:
    """Run ``work(item, requester) -> result record`` for every item (each a dict with a string
    ``id``) without a result line in ``output``, ``concurrency`` at a time, writing each outcome
    as it comes (module docstring). ``work`` raises :class:`RequestFailed` or
    :class:`ItemFailed` for an error line; any other exception is a bug and propagates after
    the items in flight are written. Returns the :class:`JobReport` (also written as JSON to
    ``summary_path``, default ``<output stem>.summary.json`` beside the file)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not (isinstance(concurrency, int) and concurrency >= 1):
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{name}: id {dup!r} appears more than once in the input")
    t0 = time.monotonic()
    report = JobReport(name, str(output), selected=len(items))
    with JobLog(output, fsync=fsync) as jl:
        report.dropped_partial, report.bad_lines = jl.dropped_partial, len(jl.bad_lines)
        if jl.dropped_partial:
            log(f"{name}: removed a cut-off last line ({jl.dropped_partial} bytes) of {output}, left by a killed run")
        for where, msg in jl.bad_lines[:5]:
            log(f"{name}: ignoring a bad line of the output: {where}: {msg}")
        if jl.duplicate_results:
            log(f"{name}: {len(jl.duplicate_results)} ids have more than one result line in {output} (edited by "
                f"hand?); the first one counts")
        todo = [it for it in items if it["id"] not in jl.done]
        report.skipped = len(items) - len(todo)
        failed_before = {it["id"] for it in todo if it["id"] in jl.failed}
        bar = None
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=name, unit="item", dynamic_ncols=True, file=sys.stderr)
        lock = threading.Lock()
        written_ok: set[str] = set()

        def one(item: dict) -> None:
            if requester.stop.is_set():
                raise _Cancelled()
            rid = item["id"]
            try:
                record = work(item, requester)
                record = {"id": rid, **{k: v for k, v in record.items() if k != "id"}}
                if "error" in record:
                    raise ValueError(f"{name}: a result record must not have an 'error' key (id {rid})")
                ok = True
            except (RequestFailed, ItemFailed) as e:
                record = {"id": rid, "error": requester.redact(str(e)), "error_type": e.error_type,
                          "attempts": e.attempts, "time": now_iso(),
                          **(e.extra if isinstance(e, ItemFailed) else {})}
                ok = False
            jl.append(record)
            with lock:
                for k in report.usage:  # paid tokens, also of a reply that could not be used
                    report.usage[k] += int((record.get("usage") or {}).get(k, 0) or 0)
                if ok:
                    written_ok.add(rid)
                    report.done += 1
                else:
                    report.failed += 1
                    report.errors[record["error_type"]] = report.errors.get(record["error_type"], 0) + 1
                if rid in failed_before:
                    report.retried += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(failed=report.failed, refresh=False)

        pool = ThreadPoolExecutor(max_workers=min(concurrency, max(1, len(todo))), thread_name_prefix=name)
        futures: list[Future] = []
        try:
            futures = [pool.submit(one, it) for it in todo]
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for f in finished:
                    exc = f.exception()
                    if exc is not None and not isinstance(exc, _Cancelled):
                        requester.stop.set()
                        raise exc
        except KeyboardInterrupt:
            report.interrupted = True
            requester.stop.set()
            in_flight = sum(1 for f in futures if f.running())
            log(f"\n{name}: interrupted; writing the {in_flight} requests in flight (Ctrl-C again to abandon them)")
            try:
                pool.shutdown(wait=True, cancel_futures=True)
            except KeyboardInterrupt:
                log(f"{name}: abandoned the requests in flight (the next run requests them again)")
        finally:
            requester.stop.set()
            pool.shutdown(wait=not report.interrupted, cancel_futures=True)
            if bar is not None:
                bar.close()
        final_done = set(jl.done) | written_ok
    report.remaining = sum(1 for i in ids if i not in final_done)
    report.calls = requester.stats["calls"]
    report.requests = requester.stats["requests"]
    report.wall_seconds = time.monotonic() - t0
    spath = Path(summary_path) if summary_path else Path(output).with_suffix(".summary.json")
    spath.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    return report


def iter_items(path: str | os.PathLike, required: Iterable[str], limit: int | None = None) -> list[dict]:
    """The rows of an input JSONL file (the bank), strictly: a malformed line or a row without one
    of ``required`` is a ``DataError`` naming the file, line and field."""
    from ..data.records import require_fields

    rows = []
    for where, _, row in iter_json_objects(path, limit):
        require_fields(row, list(required), where)
        if not isinstance(row["id"], str) or not row["id"]:
            raise DataError(f"{where}: field 'id' must be a non-empty string, got {row['id']!r:.80}")
        rows.append(row)
    return rows
