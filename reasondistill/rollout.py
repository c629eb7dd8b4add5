"""Batched sampling with a KV cache, and recomputing log-probs of sampled completions.

On-policy methods spend most of their time here, so :func:`generate` is one batched loop:
left-padded prompts go through the model once (``use_cache=True``), then one token per step
is fed with ``past_key_values``. Each prompt's forward is done once and its cache repeated for
its ``num_generations`` rows, and rows that have finished are dropped from the batch as they
go, so a long straggler does not keep paying for the whole batch.

Conventions every consumer relies on
------------------------------------
- **Groups.** Rows ``i*G .. i*G+G-1`` are the ``G = num_generations`` samples of prompt ``i``
  (``group_index[r] == r // G``); GRPO-style advantages use consecutive groups.
- **Masks.** ``completion_mask`` is 1 for every generated token up to *and including* the EOS
  token, 0 after it; ids after it are the pad id and their ``logprobs`` are 0.
- **Log-probs.** ``logprobs[r, t] = log softmax(logits / temperature)[token]``: the sampling
  distribution at the sampling temperature, *before* top-p truncation (the distribution the
  policy-gradient ratio and the KL terms are defined on, and what :func:`sequence_logprobs`
  recomputes with the same temperature). Greedy decoding (``do_sample=False`` or
  ``temperature == 0``) records the argmax token's log-prob at temperature 1.
  ``Rollout.temperature`` says which temperature the stored log-probs used.
- **Randomness.** Sampling draws one uniform number per (row, step) from ``generator`` up
  front (a ``(N, max_new_tokens)`` float64 matrix ``u``) and takes the first token, in
  vocabulary order, whose cumulative (top-p truncated) probability exceeds ``u`` times the
  total. The samples depend only on the seed, the prompts and the sampling
  settings, not on ``batch_size``, on which rows have already finished, or on the KV cache.
"""

from __future__ import annotations

import functools
import inspect

from dataclasses import dataclass, fields, replace

import torch

__all__ = ["Rollout", "generate", "encode_pairs", "sequence_logprobs", "forward_logits", "position_ids_from_mask"]


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a padded batch: ``cumsum(mask) - 1`` clamped at 0. ``(B, T) -> (B, T)``."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class Rollout:
    """A batch of sampled completions. N rows = prompts x num_generations."""

    prompt_ids: torch.Tensor
    """(N, P) long, left-padded with ``pad_token_id``."""
    prompt_mask: torch.Tensor
    """(N, P) long, 1 on real prompt tokens."""
    completion_ids: torch.Tensor
    """(N, C) long, right-padded with ``pad_token_id`` after the EOS token."""
    completion_mask: torch.Tensor
    """(N, C) long, 1 on generated tokens up to and including EOS."""
    logprobs: torch.Tensor
    """(N, C) float32, log softmax(logits / temperature) of each sampled token (before top-p); 0 on padding."""
    truncated: torch.Tensor
    """(N,) bool, the row hit max_new_tokens without producing EOS."""
    group_index: torch.Tensor
    """(N,) long, which prompt each row came from."""
    temperature: float = 1.0
    """Temperature of the distribution ``logprobs`` were taken from (1.0 for greedy)."""
    pad_token_id: int = 0
    """Id used for padding ``prompt_ids`` and ``completion_ids``."""
    num_generations: int = 1
    """Rows per prompt (G)."""

    # -- shapes and views --------------------------------------------------------------
    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """(N,) number of generated tokens per row (EOS included)."""
        return self.completion_mask.sum(-1)

    @property
    def truncation_rate(self) -> float:
        """Share of rows that hit the length cap (watch it: a rising value means nobody stops)."""
        return float(self.truncated.float().mean()) if len(self) else 0.0

    def full_ids(self) -> torch.Tensor:
        """(N, P + C) prompt followed by completion, for one forward pass."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    def full_mask(self) -> torch.Tensor:
        """(N, P + C) attention mask of :meth:`full_ids` (padding on both sides is 0)."""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    def full_position_ids(self) -> torch.Tensor:
        """(N, P + C) position ids matching :meth:`full_mask`."""
        return position_ids_from_mask(self.full_mask())

    def texts(self, tokenizer) -> list[str]:
        """Decoded completions (special tokens, EOS included, skipped)."""
        rows = [ids[m.bool()].tolist() for ids, m in zip(self.completion_ids.cpu(), self.completion_mask.cpu())]
        return tokenizer.batch_decode(rows, skip_special_tokens=True)

    def to(self, device) -> "Rollout":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def select(self, index) -> "Rollout":
        """Rows ``index`` (a slice, a list or a tensor of row indices / a bool mask)."""
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def with_stop_token(self, stop_ids: list[int], eos_token_id: int) -> "Rollout":
        """A copy whose rows that ended on one of ``stop_ids`` end on ``eos_token_id`` instead:
        a teacher's own sample (``tokenizer_compat=shared_ids``) taught to the student ends in
        the token that stops the *student*, or the student would learn never to stop."""
        last = (self.completion_mask.cumsum(-1) == self.lengths.unsqueeze(-1)) & self.completion_mask.bool()  # (N, C)
        stopped = last & torch.isin(self.completion_ids, torch.tensor(stop_ids, device=self.completion_ids.device))
        return replace(self, completion_ids=torch.where(stopped, eos_token_id, self.completion_ids))

    @staticmethod
    def cat(rollouts: list["Rollout"]) -> "Rollout":
        """Stack rollouts row-wise, re-padding prompts (left) and completions (right).

        ``group_index`` is kept as is; offset it yourself if the parts came from different
        prompt lists.
        """
        if not rollouts:
            raise ValueError("Rollout.cat needs at least one rollout")
        first = rollouts[0]
        pad = first.pad_token_id
        P = max(r.prompt_ids.shape[1] for r in rollouts)
        C = max(r.completion_ids.shape[1] for r in rollouts)

        def left(x, n, v):
            return torch.nn.functional.pad(x, (n - x.shape[1], 0), value=v)

        def right(x, n, v):
            return torch.nn.functional.pad(x, (0, n - x.shape[1]), value=v)

        return replace(
            first,
            prompt_ids=torch.cat([left(r.prompt_ids, P, pad) for r in rollouts]),
            prompt_mask=torch.cat([left(r.prompt_mask, P, 0) for r in rollouts]),
            completion_ids=torch.cat([right(r.completion_ids, C, pad) for r in rollouts]),
            completion_mask=torch.cat([right(r.completion_mask, C, 0) for r in rollouts]),
            logprobs=torch.cat([right(r.logprobs, C, 0.0) for r in rollouts]),
            truncated=torch.cat([r.truncated for r in rollouts]),
            group_index=torch.cat([r.group_index for r in rollouts]),
        )


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------
def _as_id_lists(tokenizer, prompts) -> list[list[int]]:
    if len(prompts) == 0:
        raise ValueError("generate() needs at least one prompt")
    if isinstance(prompts[0], str):
        if tokenizer is None:
            raise ValueError("text prompts need a tokenizer")
        # rendered chat prompts already carry their special tokens: add none
        out = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    else:
        out = [p.tolist() if isinstance(p, torch.Tensor) else list(p) for p in prompts]
    for i, p in enumerate(out):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
    return out


def _eos_ids(tokenizer, eos_token_id, model=None) -> list[int]:
    """Stop ids: the explicit ``eos_token_id``, else ``models.stop_ids`` (the tokenizer's EOS and
    the model's ``generation_config.eos_token_id``; instruct models often list several)."""
    if eos_token_id is None:
        from .models import stop_ids

        return stop_ids(tokenizer, model)
    if isinstance(eos_token_id, int):
        return [eos_token_id]
    return sorted({int(e) for e in eos_token_id if e is not None})


def _left_pad(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, P - len(r):] = 1
    return ids.to(device), mask.to(device)


def _pick(logits: torch.Tensor, greedy: bool, temperature: float, top_p: float,
          u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token and its log-prob for each row. ``logits (B, V)`` float32, ``u (B,)`` uniforms."""
    if greedy:
        tok = logits.argmax(-1)
        lp = logits.log_softmax(-1).gather(-1, tok[:, None])[:, 0]
        return tok, lp
    logp = (logits / temperature).log_softmax(-1)  # the distribution logprobs refer to
    probs = logp.exp()
    if top_p < 1.0:
        # keep the smallest set of most likely tokens whose mass reaches top_p (the top one always)
        sp, order = probs.sort(dim=-1, descending=True, stable=True)
        drop = (sp.cumsum(-1) - sp) >= top_p
        probs = probs.masked_fill(drop.scatter(-1, order, drop), 0.0)
    # inverse CDF in vocabulary order: the first token whose cumulative mass exceeds u * total
    cdf = probs.double().cumsum(-1)
    tok = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).clamp(max=cdf.shape[-1] - 1)[:, 0]
    return tok, logp.gather(-1, tok[:, None])[:, 0]


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@functools.lru_cache(maxsize=None)
def _cache_arg(model_cls) -> str:
    """The keyword of the KV cache: ``cache`` in recent transformers (``past_key_values`` is
    deprecated there and due to be removed), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model_cls.forward).parameters else "past_key_values"


def _out_cache(out):
    cache = out.get("cache")
    return cache if cache is not None else out.get("past_key_values")


def _prompt_forward(model, ids, mask):
    pos = position_ids_from_mask(mask)
    try:
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    except TypeError:  # a model without logits_to_keep
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    return out.logits[:, -1].float(), _out_cache(out), pos[:, -1] + 1


def _generate_chunk(model, prompts, G, max_new_tokens, greedy, temperature, top_p, eos, pad, u, device):
    """Generate for one chunk of prompts; ``u`` holds this chunk's rows' uniforms (or None)."""
    ids, mask = _left_pad(prompts, pad, device)  # (b, P)
    logits, cache, next_pos = _prompt_forward(model, ids, mask)
    if G > 1:  # one prompt forward per prompt; its cache is repeated for the G rows of its group
        ids, mask = ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)
        if hasattr(cache, "batch_repeat_interleave"):
            cache.batch_repeat_interleave(G)
            logits, next_pos = logits.repeat_interleave(G, 0), next_pos.repeat_interleave(G, 0)
        else:  # a cache that cannot be repeated: redo the forward on the repeated rows
            logits, cache, next_pos = _prompt_forward(model, ids, mask)
    B, P = ids.shape
    attn = torch.ones((B, P + max_new_tokens), dtype=mask.dtype, device=device)
    attn[:, :P] = mask
    out_ids = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=device)
    out_lp = torch.zeros((B, max_new_tokens), dtype=torch.float32, device=device)
    out_mask = torch.zeros((B, max_new_tokens), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    eos_t = torch.tensor(eos, dtype=torch.long, device=device)
    active = torch.arange(B, device=device)  # chunk rows still in the (compacted) batch
    steps = 0
    for t in range(max_new_tokens):
        tok, lp = _pick(logits, greedy, temperature, top_p, None if u is None else u[active, t])
        alive = ~finished[active]
        rows = active[alive]
        out_ids[rows, t] = tok[alive]
        out_lp[rows, t] = lp[alive]
        out_mask[rows, t] = 1
        finished[rows] = torch.isin(tok[alive], eos_t)
        steps = t + 1
        if steps == max_new_tokens or bool(finished.all()):
            break
        still = ~finished[active]
        n_done = len(active) - int(still.sum())
        if n_done and n_done >= max(1, len(active) // 8) and hasattr(cache, "batch_select_indices"):
            # drop finished rows from the batch
            keep = still.nonzero()[:, 0]
            cache.batch_select_indices(keep)
            active, tok = active[keep], tok[keep]
        out = model(input_ids=tok[:, None], attention_mask=attn[active, :P + t + 1],
                    position_ids=(next_pos[active] + t)[:, None], use_cache=True, **{_cache_arg(type(model)): cache})
        cache = _out_cache(out)
        logits = out.logits[:, -1].float()
    return dict(prompt_ids=ids, prompt_mask=mask, completion_ids=out_ids[:, :steps],
                completion_mask=out_mask[:, :steps], logprobs=out_lp[:, :steps], truncated=~finished)


def generate(model, tokenizer, prompts, num_generations: int = 1, max_new_tokens: int = 64,
             temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True,
             eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
             generator: torch.Generator | None = None, batch_size: int | None = None) -> Rollout:
    """Sample ``num_generations`` completions for each prompt.

    Args:
        prompts: rendered prompt strings (see ``models.render_prompt``; encoded without adding
            special tokens) or token-id lists.
        num_generations: G; rows ``i*G .. i*G+G-1`` belong to prompt ``i``.
        max_new_tokens: length cap; rows reaching it without EOS are ``truncated``.
        temperature, top_p, do_sample: sampling settings; ``do_sample=False`` or
            ``temperature == 0`` is greedy. See the module docstring for what ``logprobs`` hold.
        eos_token_id: id or list of ids that end a row (default ``tokenizer.eos_token_id``).
        pad_token_id: padding id (default ``tokenizer.pad_token_id``, else the first EOS id).
        generator: source of randomness (reproducible given its seed); default: torch's global RNG.
        batch_size: at most this many rows per forward (rounded to whole groups, at least one
            group); prompts are processed in consecutive chunks. ``None``: all at once.

    The model runs under ``torch.no_grad()`` in eval mode; its train/eval mode is restored.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    rows = _as_id_lists(tokenizer, prompts)
    eos = _eos_ids(tokenizer, eos_token_id, model)
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer, "pad_token_id", None)
    if pad_token_id is None:
        pad_token_id = eos[0] if eos else 0
    greedy = (not do_sample) or temperature == 0
    G = num_generations
    N = len(rows) * G
    device = _model_device(model)
    u = None
    if not greedy:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand((N, max_new_tokens), generator=generator, dtype=torch.float64, device=gen_device).to(device)
    per_chunk = len(rows) if batch_size is None else max(1, batch_size // G)

    was_training = model.training
    model.eval()
    parts = []
    try:
        with torch.no_grad():
            for a in range(0, len(rows), per_chunk):
                chunk = rows[a:a + per_chunk]
                uc = None if u is None else u[a * G:(a + len(chunk)) * G]
                parts.append(_generate_chunk(model, chunk, G, max_new_tokens, greedy, float(temperature),
                                             float(top_p), eos, pad_token_id, uc, device))
    finally:
        model.train(was_training)

    group_index = torch.arange(len(rows), device=device).repeat_interleave(G)  # (N,)
    meta = dict(temperature=1.0 if greedy else float(temperature), pad_token_id=pad_token_id, num_generations=G)
    rollouts, start = [], 0
    for p in parts:
        n = p["completion_ids"].shape[0]
        rollouts.append(Rollout(**p, group_index=group_index[start:start + n], **meta))
        start += n
    return Rollout.cat(rollouts) if len(rollouts) > 1 else rollouts[0]


# --------------------------------------------------------------------------------------
# Dataset pairs in the rollout layout
# --------------------------------------------------------------------------------------
def encode_pairs(tokenizer, prompts: list[str], completions: list[str], max_prompt: int, max_completion: int,
                 add_eos: bool = True):
    """Tokenise (rendered prompt, completion text) pairs into a ``Rollout`` layout:
    left-padded prompts, right-padded completions ending in EOS, so fixed-data methods
    (SFT, KD, GKD's off-policy batches) share every forward with on-policy ones."""
    from .models import encode_prompts

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos  # as generate() falls back
    p_ids = [ids[-max_prompt:] for ids in encode_prompts(tokenizer, prompts)]
    c_ids, cut = [], []
    for c in completions:
        ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        room = max_completion - 1 if add_eos else max_completion
        cut.append(len(ids) > room)
        # a completion cut at the limit gets no EOS: teaching it to stop mid-solution would be wrong
        c_ids.append(ids[:max_completion] if cut[-1] else ids + ([eos] if add_eos else []))
    P = max(len(x) for x in p_ids)
    C = max(len(x) for x in c_ids)
    n = len(prompts)
    prompt_ids = torch.full((n, P), pad, dtype=torch.long)
    prompt_mask = torch.zeros((n, P), dtype=torch.long)
    completion_ids = torch.full((n, C), pad, dtype=torch.long)
    completion_mask = torch.zeros((n, C), dtype=torch.long)
    for i, (p, c) in enumerate(zip(p_ids, c_ids)):
        prompt_ids[i, P - len(p):] = torch.tensor(p)
        prompt_mask[i, P - len(p):] = 1
        completion_ids[i, : len(c)] = torch.tensor(c)
        completion_mask[i, : len(c)] = 1
    return Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                   completion_mask=completion_mask, logprobs=torch.zeros(n, C),
                   truncated=torch.tensor(cut, dtype=torch.bool), group_index=torch.arange(n))


# --------------------------------------------------------------------------------------
# Recomputing with a full forward
# --------------------------------------------------------------------------------------
def _completion_logits(model, rollout: Rollout) -> torch.Tensor:
    C = rollout.completion_ids.shape[1]
    ids, mask = rollout.full_ids(), rollout.full_mask()
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    try:  # only the positions that predict completion tokens: P-1 .. P+C-2
        logits = model(**kwargs, logits_to_keep=C + 1).logits
    except TypeError:
        logits = model(**kwargs).logits
    return logits[:, -(C + 1):-1]


def _chunks(rollout: Rollout, batch_size: int | None):
    n = len(rollout)
    step = n if not batch_size else batch_size
    for a in range(0, n, step):
        yield rollout.select(slice(a, a + step))


def forward_logits(model, rollout: Rollout, batch_size: int | None = None) -> torch.Tensor:
    """(N, C, V) raw logits at the positions that predict each completion token (no
    temperature applied; with grad if grad is enabled). ``batch_size`` splits rows."""
    return torch.cat([_completion_logits(model, r) for r in _chunks(rollout, batch_size)])


def sequence_logprobs(model, rollout: Rollout, temperature: float = 1.0,
                      batch_size: int | None = None) -> torch.Tensor:
    """(N, C) float32 log softmax(logits / temperature) of each completion token under
    ``model``, 0 on padding; with grad if grad is enabled. Use the rollout's sampling
    temperature (``rollout.temperature``) for importance ratios."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out = []
    for r in _chunks(rollout, batch_size):
        logits = _completion_logits(model, r).float() / temperature  # (n, C, V)
        tok = logits.gather(-1, r.completion_ids.unsqueeze(-1)).squeeze(-1)
        out.append((tok - logits.logsumexp(-1)).masked_fill(r.completion_mask == 0, 0.0))
    return torch.cat(out)
