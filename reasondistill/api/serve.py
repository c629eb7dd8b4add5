"""A small OpenAI-compatible server for a local Hugging Face causal LM (standard library HTTP).

    python -m reasondistill.api.serve --model embedded:teacher --port 8000
    # then: ChatClient("http://127.0.0.1:8000/v1", model="embedded:teacher").chat([...])

It lets everything that speaks the OpenAI chat API (the LLM judges, the API-teacher
pipeline, :class:`reasondistill.api.client.ChatClient`, the ``openai`` SDK, curl) use a
local checkpoint, e.g. the embedded teacher in tests or a trained student. It is built for
correctness and tests, not throughput: one generation runs at a time (a lock around
:func:`reasondistill.rollout.generate`), without batching across requests.
``transformers serve`` (or vLLM, SGLang) is the alternative for real workloads; note that
``transformers serve`` ignores ``logprobs``, which this server honours.

Endpoints
---------
- ``POST /v1/chat/completions``. The messages are rendered with the tokenizer's chat template
  (``apply_chat_template(..., add_generation_prompt=True)``; for one user message, plus an
  optional system message, that is exactly :func:`reasondistill.models.render_prompt`).
  Fields: ``messages`` (required; ``content`` a string or a list of ``{"type": "text"}``
  parts; roles system/developer/user/assistant), ``model`` (optional; if given it must be
  the served id or the model path, else 404), ``temperature`` (default 1.0; 0 is greedy),
  ``top_p`` (default 1.0), ``max_tokens`` or ``max_completion_tokens`` (default
  ``default_max_tokens``; clamped to the model's context), ``n`` (1..16), ``seed``
  (sampling is reproducible given it; without one each request draws a fresh seed),
  ``stop`` (a string or up to 4; the text is cut before the first occurrence, found after
  generation), ``logprobs`` (the sampled tokens' log-probs as
  :func:`~reasondistill.rollout.generate` records them: ``log softmax(logits / T)`` before
  top-p, at T = 1 for greedy; ``top_logprobs`` must be 0). ``stream``, tools, non-text
  ``response_format``, ``logit_bias`` and non-zero penalties are refused (400); other
  fields are ignored. The response follows the OpenAI schema: ``choices[i].message.content``,
  ``finish_reason`` ("stop": EOS or a stop string; "length": ``max_tokens`` reached) and
  ``usage`` (``prompt_tokens``, ``completion_tokens`` including the EOS token, ``total_tokens``).
- ``GET /v1/models`` and ``GET /v1/models/{id}``; ``GET /health``.

Errors are JSON ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad request (the
message names the missing or invalid field), 401 without the right API key (when one is
set), 404 for an unknown path or model, 405 for a wrong method, 411/413 for a missing or
too large body, 500 if generation itself fails.

Authentication is off unless ``serve(api_key=...)`` (or ``$REASONDISTILL_SERVE_API_KEY`` for
``main``) is set; then every request but ``/health`` needs ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import argparse
import hmac
import json
import math
import os
import secrets
import socket
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from .. import __version__

__all__ = ["ChatServer", "RequestError", "serve", "main"]

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_N = 16
MAX_STOP = 4
_ROLES = {"system", "developer", "user", "assistant"}


class RequestError(Exception):
    """A request the server refuses; becomes the JSON error response."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(param: str, message: str) -> RequestError:
    return RequestError(400, f"{param}: {message}", param=param)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _default_or_zero(v) -> bool:
    return v is None or (_is_number(v) and v == 0)


# field -> test that the value is one the server can honour (otherwise 400 "not supported")
_ONLY_DEFAULTS = {
    "tools": lambda v: not v,
    "functions": lambda v: not v,
    "tool_choice": lambda v: v in (None, "none", "auto"),
    "logit_bias": lambda v: not v,
    "presence_penalty": _default_or_zero,
    "frequency_penalty": _default_or_zero,
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
}


def _parse_messages(value) -> list[dict]:
    if value is None:
        raise _bad("messages", "required field is missing (a non-empty list of {'role', 'content'} objects)")
    if not isinstance(value, list) or not value:
        raise _bad("messages", "must be a non-empty list of {'role', 'content'} objects")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(where, "must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in _ROLES:
            raise _bad(f"{where}.role", f"must be one of {sorted(_ROLES)}, got {role!r}")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text can be rendered
            texts = []
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise _bad(f"{where}.content[{j}]", "only {'type': 'text', 'text': ...} parts are supported")
                texts.append(part["text"])
            content = "\n".join(texts)
        if not isinstance(content, str):
            raise _bad(f"{where}.content", f"must be a string or a list of text parts, got {type(content).__name__}")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


class ChatServer(ThreadingHTTPServer):
    """The HTTP server; :meth:`chat_completion` is the endpoint's logic without HTTP.

    Start it with ``serve_forever()`` (``main``) or :meth:`start` (a daemon thread, for tests);
    :meth:`stop` shuts it down. ``url`` is the base URL clients use (``http://HOST:PORT/v1``).
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], model, tokenizer, model_name: str, *,
                 aliases: tuple[str, ...] = (), default_max_tokens: int = 256, api_key: str | None = None,
                 verbose: bool = False):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.model, self.tokenizer = model, tokenizer
        self.model_name = model_name
        self.model_ids = {model_name, *aliases}
        self.default_max_tokens = default_max_tokens
        self.api_key = api_key or None
        self.verbose = verbose
        self.created = int(time.time())
        self.generate_lock = threading.Lock()
        self.context_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        eos = [getattr(tokenizer, "eos_token_id", None)]
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos += list(gen_eos) if isinstance(gen_eos, (list, tuple)) else [gen_eos]
        self.eos_ids = {int(e) for e in eos if e is not None}
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/v1"

    def start(self, poll_interval: float = 0.1) -> "ChatServer":
        """Serve in a daemon thread; returns ``self``. ``poll_interval`` bounds how long :meth:`stop` waits."""
        self._thread = threading.Thread(target=self.serve_forever, args=(poll_interval,), name="chat-server",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.server_close()

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            return  # the client went away
        super().handle_error(request, client_address)

    # -- the endpoint ---------------------------------------------------------------------
    def models_list(self) -> dict:
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "reasondistill"}

    def _parse(self, req: dict) -> dict:
        for field, ok in _ONLY_DEFAULTS.items():
            if not ok(req.get(field)):
                raise _bad(field, "not supported by this server")
        if req.get("stream"):
            raise _bad("stream", "streaming is not supported by this server; send stream=false")
        model = req.get("model")
        if model is not None:
            if not isinstance(model, str):
                raise _bad("model", f"must be a string, got {type(model).__name__}")
            if model not in self.model_ids:
                raise RequestError(404, f"model: {model!r} is not served here; available: {self.model_name!r}",
                                   param="model", code="model_not_found")
        p = {"messages": _parse_messages(req.get("messages"))}
        t = req.get("temperature")
        if t is not None and not (_is_number(t) and t >= 0):
            raise _bad("temperature", f"must be a number >= 0 (0 is greedy), got {t!r}")
        p["temperature"] = 1.0 if t is None else float(t)
        top_p = req.get("top_p")
        if top_p is not None and not (_is_number(top_p) and 0 < top_p <= 1):
            raise _bad("top_p", f"must be a number in (0, 1], got {top_p!r}")
        p["top_p"] = 1.0 if top_p is None else float(top_p)
        field = "max_completion_tokens" if req.get("max_completion_tokens") is not None else "max_tokens"
        mt = req.get(field)
        if mt is not None and not (_is_int(mt) and mt >= 1):
            raise _bad(field, f"must be an integer >= 1, got {mt!r}")
        p["max_tokens"] = self.default_max_tokens if mt is None else mt
        n = req.get("n")
        if n is not None and not (_is_int(n) and 1 <= n <= MAX_N):
            raise _bad("n", f"must be an integer in 1..{MAX_N}, got {n!r}")
        p["n"] = 1 if n is None else n
        seed = req.get("seed")
        if seed is not None and not (_is_int(seed) and -(2 ** 63) <= seed < 2 ** 64):
            raise _bad("seed", f"must be an integer (64-bit), got {seed!r}")
        p["seed"] = seed
        stop = req.get("stop")
        stop = [stop] if isinstance(stop, str) else stop
        if stop is not None and not (isinstance(stop, list) and len(stop) <= MAX_STOP
                                     and all(isinstance(s, str) and s for s in stop)):
            raise _bad("stop", f"must be a non-empty string or a list of at most {MAX_STOP} of them")
        p["stop"] = stop or []
        lp = req.get("logprobs")
        if lp is not None and not isinstance(lp, bool):
            raise _bad("logprobs", f"must be true or false, got {lp!r}")
        p["logprobs"] = bool(lp)
        top = req.get("top_logprobs")
        if top is not None and not (_is_int(top) and top == 0):
            raise _bad("top_logprobs", "only the sampled token's log-prob is available; use 0 or leave it out")
        return p

    def _render(self, messages: list[dict]) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - a template refusing a conversation is the caller's problem
            raise _bad("messages", f"the chat template could not render them: {type(e).__name__}: {e}") from e
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not ids:
            raise _bad("messages", "they render to an empty prompt")
        return ids

    def _choice(self, index: int, ids: list[int], lps: list[float], truncated: bool, stop: list[str],
                want_logprobs: bool) -> tuple[dict, int]:
        """One choice and its completion-token count, from a row's generated ids (EOS included)."""
        generated = len(ids)
        if ids and not truncated and ids[-1] in self.eos_ids:
            ids, lps = ids[:-1], lps[:-1]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        finish = "length" if truncated else "stop"
        hits = [(text.find(s), s) for s in stop if s in text]
        if hits:
            cut, s = min(hits)
            text, finish = text[:cut], "stop"
            end, seen = cut + len(s), 0  # keep the tokens up to the one that completed the stop string
            for k, t in enumerate(ids):
                seen += len(self.tokenizer.decode([t], skip_special_tokens=True))
                if seen >= end:
                    ids, lps = ids[:k + 1], lps[:k + 1]
                    break
            generated = len(ids)
        logprobs = None
        if want_logprobs:
            content = []
            for t, lp in zip(ids, lps):
                tok = self.tokenizer.decode([t], skip_special_tokens=True)
                content.append({"token": tok, "logprob": lp if math.isfinite(lp) else -9999.0,
                                "bytes": list(tok.encode("utf-8")), "top_logprobs": []})
            logprobs = {"content": content}
        choice = {"index": index, "message": {"role": "assistant", "content": text},
                  "logprobs": logprobs, "finish_reason": finish}
        return choice, generated

    def chat_completion(self, request: dict) -> dict:
        """The response to one ``/v1/chat/completions`` request; raises :class:`RequestError`."""
        import torch

        from ..rollout import generate

        if not isinstance(request, dict):
            raise RequestError(400, "the request body must be a JSON object")
        p = self._parse(request)
        prompt = self._render(p["messages"])
        max_new = p["max_tokens"]
        if self.context_length:
            room = self.context_length - len(prompt)
            if room < 1:
                raise _bad("messages", f"the prompt is {len(prompt)} tokens; the model's context is "
                                       f"{self.context_length} tokens")
            max_new = min(max_new, room)
        greedy = p["temperature"] == 0
        generator = None
        if not greedy:
            seed = p["seed"] if p["seed"] is not None else secrets.randbits(63)
            generator = torch.Generator(device="cpu").manual_seed(seed)
        with self.generate_lock:
            r = generate(self.model, self.tokenizer, [prompt], num_generations=p["n"], max_new_tokens=max_new,
                         temperature=p["temperature"], top_p=p["top_p"], do_sample=not greedy,
                         generator=generator)
        choices, completion_tokens = [], 0
        for i in range(len(r)):
            keep = r.completion_mask[i].bool()
            choice, used = self._choice(i, r.completion_ids[i][keep].tolist(), r.logprobs[i][keep].tolist(),
                                        bool(r.truncated[i]), p["stop"], p["logprobs"])
            choices.append(choice)
            completion_tokens += used
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices,
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": completion_tokens,
                          "total_tokens": len(prompt) + completion_tokens}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds a connection may sit idle (keep-alive) or stall mid-request before it is closed
    server: ChatServer

    server_version = f"reasondistill-serve/{__version__}"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, obj: dict, headers: dict | None = None) -> None:
        body = json.dumps(obj).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _fail(self, err: RequestError, headers: dict | None = None) -> None:
        self._send(err.status, err.body(), headers)

    def _path(self) -> str:
        path = urlsplit(self.path).path
        return path[:-1] if len(path) > 1 and path.endswith("/") else path

    def _authorized(self) -> bool:
        key = self.server.api_key
        if not key:
            return True
        sent = self.headers.get("Authorization", "")
        if sent.startswith("Bearer ") and hmac.compare_digest(sent[7:].strip().encode(), key.encode()):
            return True
        self._fail(RequestError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                                code="invalid_api_key"))
        return False

    def _read_json(self):
        """The parsed JSON body, or None after an error response was sent."""
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            self._fail(RequestError(411, "a Content-Length header is required (chunked bodies are not supported)"))
            return None
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._fail(RequestError(400, f"invalid Content-Length {length!r}"))
            return None
        if n > MAX_BODY_BYTES:
            self.close_connection = True
            self._fail(RequestError(413, f"request body of {n} bytes is over the {MAX_BODY_BYTES}-byte limit"))
            return None
        raw = self.rfile.read(n)
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            self._fail(RequestError(400, f"the request body is not valid JSON: {e}"))
            return None

    def do_GET(self):  # noqa: N802 - http.server's naming
        path = self._path()
        if path in ("/health", "/v1/health"):
            return self._send(200, {"status": "ok", "model": self.server.model_name})
        if path == "/v1/chat/completions":
            return self._fail(RequestError(405, "use POST for /v1/chat/completions"), {"Allow": "POST"})
        if not (path == "/v1/models" or path.startswith("/v1/models/")):
            return self._fail(RequestError(404, f"no such endpoint: GET {path}", code="not_found"))
        if not self._authorized():
            return None
        if path == "/v1/models":
            return self._send(200, self.server.models_list())
        name = unquote(path[len("/v1/models/"):])
        if name in self.server.model_ids:
            return self._send(200, self.server.model_card())
        return self._fail(RequestError(404, f"model {name!r} is not served here; available: "
                                            f"{self.server.model_name!r}", param="model", code="model_not_found"))

    def do_POST(self):  # noqa: N802
        path = self._path()
        if path != "/v1/chat/completions":
            if path == "/v1/models" or path.startswith("/v1/models/") or path in ("/health", "/v1/health"):
                self.close_connection = True
                return self._fail(RequestError(405, f"use GET for {path}"), {"Allow": "GET"})
            self.close_connection = True
            return self._fail(RequestError(404, f"no such endpoint: POST {path} (this server has "
                                                f"/v1/chat/completions and /v1/models)", code="not_found"))
        if not self._authorized():
            self.close_connection = True
            return None
        request = self._read_json()
        if request is None:
            return None
        try:
            response = self.server.chat_completion(request)
        except RequestError as e:
            return self._fail(e)
        except Exception as e:  # noqa: BLE001 - report it, keep serving
            traceback.print_exc(file=sys.stderr)
            return self._fail(RequestError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error"))
        return self._send(200, response)


def serve(model_path: str, host: str = "127.0.0.1", port: int = 0, *, model_name: str | None = None,
          dtype: str = "float32", device: str = "cpu", default_max_tokens: int = 256,
          api_key: str | None = None, verbose: bool = False) -> ChatServer:
    """Load ``model_path`` and bind a :class:`ChatServer` to ``host:port`` (0: a free port).

    ``model_path``: a local folder, a hub name or ``embedded:teacher`` / ``embedded:student``
    (:func:`reasondistill.models.resolve_model`). The served id is ``model_name`` (default:
    ``model_path`` as given); requests may name either. ``device``: "cpu", "cuda", ... or
    "auto". The server is bound but not serving: call ``serve_forever()`` or ``.start()``.
    """
    from ..models import resolve_model
    from ..models import load_model, load_tokenizer

    if not (_is_int(default_max_tokens) and default_max_tokens >= 1):
        raise ValueError(f"default_max_tokens must be an int >= 1, got {default_max_tokens!r}")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    path = resolve_model(model_path)
    tokenizer = load_tokenizer(path)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the tokenizer of {model_path!r} has no chat_template, so chat messages cannot be "
                         f"rendered; save one with the model (tokenizer.chat_template = ...)")
    model = load_model(path, dtype=dtype, device=device)
    model.requires_grad_(False)
    model.eval()
    name = model_name or model_path
    return ChatServer((host, port), model, tokenizer, name, aliases=(model_path, path),
                      default_max_tokens=default_max_tokens, api_key=api_key, verbose=verbose)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reasondistill.api.serve",
                                 description="Serve a local causal LM with an OpenAI-compatible chat API.")
    ap.add_argument("--model", required=True, help="model folder, hub name, or embedded:teacher / embedded:student")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="port (0: any free port; default 8000)")
    ap.add_argument("--name", default=None, help="model id to serve under (default: --model as given)")
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto (default)")
    ap.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request gives none")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    api_key = os.environ.get("REASONDISTILL_SERVE_API_KEY") or None
    server = serve(args.model, args.host, args.port, model_name=args.name, dtype=args.dtype, device=args.device,
                   default_max_tokens=args.default_max_tokens, api_key=api_key, verbose=args.verbose)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"[reasondistill] warning: listening on {args.host} without authentication; set "
              f"REASONDISTILL_SERVE_API_KEY to require a key", file=sys.stderr)
    print(f"[reasondistill] serving {server.model_name!r} at {server.url} (Ctrl-C to stop)", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\n[reasondistill] stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
