"""The Box 5 answer judge of sft_then_grpo_api_teachers.md (Table 3.3): asked by the hybrid
GRPO reward (``rewards.hybrid_rewards``) only when the local check cannot decide. It lives
here, beside the API machinery it uses, so ``rewards.py`` stays free of network code.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Sequence

from ..rewards import parse_binary_verdict
from .jobs import ChatRequester, RequestFailed

class AnswerJudge:
    """Box 5 over an OpenAI-compatible endpoint, for the answers the local check leaves undecided.

    Requests go through :class:`reasondistill.api.jobs.ChatRequester` (the openai SDK: retries,
    backoff, timeouts; ``rpm`` / ``tpm`` limits on every attempt), ``concurrency`` at a time in
    one batch per call of :meth:`judge`. Verdicts are cached by content (the SHA-256 of the
    filled prompt), in memory and, with ``cache_path``, in an append-only JSONL file read back on
    start, so a resumed run or a repeated answer is never paid for twice. A failed request or an
    unreadable reply gives None (the caller scores it 0 and counts it); it is not cached.
    """

    def __init__(self, base_url: str, model: str, *, template: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 4, rpm: float | None = None, tpm: float | None = None, timeout: float = 120.0,
                 max_retries: int = 3, max_tokens: int = 8, cache_path: str | None = None, requester=None):
        import json
        import os
        from pathlib import Path


        self.template = template if template is not None else _default_judge_template()
        for ph in ("{question}", "{ref}", "{pred_ans}"):
            if ph not in self.template:
                raise ValueError(f"answer-judge template lacks {ph}")
        key = os.environ.get(api_key_env) if api_key_env else None
        self.requester = requester or ChatRequester(base_url, model, api_key=key, timeout=timeout,
                                                    max_retries=max_retries, concurrency=concurrency, rpm=rpm, tpm=tpm)
        self.concurrency, self.max_tokens = max(1, int(concurrency)), max_tokens
        self.cache: dict[str, int] = {}
        self.stats = {"asked": 0, "cache_hits": 0, "requests": 0, "failed": 0}
        self._lock = threading.Lock()
        self._cache_file = None
        if cache_path:
            p = Path(cache_path)
            if p.exists():
                for line in p.read_text(encoding="utf-8").splitlines():
                    try:
                        row = json.loads(line)
                        self.cache[row["key"]] = int(row["verdict"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut by a kill: that verdict is asked again
            p.parent.mkdir(parents=True, exist_ok=True)
            self._cache_file = open(p, "a", encoding="utf-8")

    def prompt(self, question: str, ref: Any, pred: str) -> str:
        values = {"{question}": str(question), "{ref}": str(ref), "{pred_ans}": str(pred)}
        return re.sub(r"\{question\}|\{ref\}|\{pred_ans\}", lambda m: values[m.group(0)], self.template)

    @staticmethod
    def _key(prompt: str) -> str:
        import hashlib

        return hashlib.sha256(prompt.encode("utf-8")).hexdigest()

    def _ask(self, prompt: str) -> int | None:

        try:
            res = self.requester.chat([{"role": "user", "content": prompt}], temperature=0.0,
                                      max_tokens=self.max_tokens)
        except RequestFailed:
            return None
        return parse_binary_verdict(res.text)

    def judge(self, items: Sequence[tuple[str, Any, str]]) -> list[int | None]:
        """Verdicts (1, 0, or None for a failure) for ``(question, reference, predicted answer)``
        triples: cached ones at once, the distinct rest in one concurrent batch."""
        import json
        from concurrent.futures import ThreadPoolExecutor

        prompts = [self.prompt(*it) for it in items]
        keys = [self._key(p) for p in prompts]
        todo = {k: p for k, p in zip(keys, prompts) if k not in self.cache}
        with self._lock:
            self.stats["asked"] += len(items)
            self.stats["cache_hits"] += len(items) - sum(1 for k in keys if k in todo)
            self.stats["requests"] += len(todo)
        found: dict[str, int | None] = {}
        if todo:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(todo))) as pool:
                found = dict(zip(todo, pool.map(self._ask, todo.values())))
        for k, v in found.items():
            if v is None:
                self.stats["failed"] += 1
                continue
            self.cache[k] = v
            if self._cache_file is not None:
                self._cache_file.write(json.dumps({"key": k, "verdict": v}) + "\n")
                self._cache_file.flush()
        return [self.cache.get(k, found.get(k)) for k in keys]

    def close(self) -> None:
        if self._cache_file is not None:
            self._cache_file.close()
        self.requester.close()


def _default_judge_template() -> str:
    from pathlib import Path

    return (Path(__file__).resolve().parent.parent / "templates" / "pipeline_answer_judge.txt").read_text(
        encoding="utf-8").removesuffix("\n")


