"""An OpenAI-compatible endpoint as the model under evaluation.

The pipeline paper evaluates its API teachers and its students with the same prompt and
settings; here the same evaluation code runs either a local model or an :class:`APIModel`
(``reasondistill eval --base-url URL --api-model NAME``): ``math_eval.generate_batches`` sends
each conversation to the endpoint (one request per answer, ``workers`` in flight, the retries
and rate-limit handling of ``api.client.ChatClient``) instead of sampling locally, and yields
an :class:`APIBatch` where a local model yields a ``Rollout``. What an endpoint cannot give is
refused rather than faked: the teacher KL (no token ids) and raw, non-chat prompts.

A request that still fails after its retries becomes an empty answer (graded wrong) and is
counted in the summary's ``api_failures``, never fatal: one bad request must not sink a
thousand-question run.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from ..api.client import APIError, ChatClient


@dataclass
class APIBatch:
    """The endpoint's answers in the shape the evaluations read from a ``Rollout``."""

    lengths: torch.Tensor
    """(N,) completion tokens per answer, from the response's ``usage`` (0 when the server sends none)."""
    truncated: torch.Tensor
    """(N,) bool: the answer stopped at ``max_tokens`` (``finish_reason == "length"``)."""
    group_index: torch.Tensor
    """(N,) which conversation each answer belongs to (``samples`` consecutive answers each)."""
    errors: list = field(default_factory=list)
    """(N,) None, or the message of the request that failed."""

    def __len__(self) -> int:
        return len(self.group_index)


class APIModel:
    """A chat model behind ``base_url`` (``http(s)://HOST:PORT/v1``), its key read from the
    environment variable ``api_key_env`` (none sent when it is unset: fine for local servers)."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", workers: int = 4,
                 timeout: float = 120.0, max_retries: int = 5, client: ChatClient | None = None):
        self.client = client or ChatClient(base_url, model, api_key=os.environ.get(api_key_env) or None,
                                           timeout=timeout, max_retries=max_retries)
        self.workers = workers
        self.name = model

    def __repr__(self) -> str:
        return f"APIModel({self.client!r})"

    def generate(self, conversations: list[list[dict]], *, samples: int = 1, temperature: float = 0.0,
                 top_p: float = 1.0, max_new_tokens: int = 512, seed: int = 0) -> tuple[list[str], APIBatch]:
        """``samples`` answers per conversation (rows ``i*samples ..`` answer conversation ``i``)."""
        jobs = [(i, k) for i in range(len(conversations)) for k in range(samples)]

        def one(job):
            i, k = job
            try:  # a distinct seed per answer, so several samples of one question differ
                r = self.client.chat_full(conversations[i], temperature=temperature, top_p=top_p,
                                          max_tokens=max_new_tokens, seed=seed + k)
            except APIError as e:
                return "", 0, False, str(e)
            choice = r["choices"][0]
            tokens = (r.get("usage") or {}).get("completion_tokens") or 0
            return choice["message"]["content"], int(tokens), choice.get("finish_reason") == "length", None

        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(jobs) or 1))) as pool:
            out = list(pool.map(one, jobs))
        texts = [o[0] for o in out]
        batch = APIBatch(lengths=torch.tensor([o[1] for o in out]), truncated=torch.tensor([o[2] for o in out]),
                         group_index=torch.tensor([i for i, _ in jobs]), errors=[o[3] for o in out])
        return texts, batch
