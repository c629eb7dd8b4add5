"""Side-by-side generation speed on the embedded student: reasondistill's KV-cache sampler vs
transformers' ``model.generate`` vs recomputing the whole sequence every step (no cache).

    python benchmarks/bench_generation.py [--batch 64] [--new-tokens 40] [--repeats 3] [--threads 2]

Prints new tokens per second for each and the ratios; all three run in one process, same
prompts, greedy decoding, EOS disabled so every row generates exactly --new-tokens tokens.
"""

import argparse
import time

import torch

from reasondistill.engine import resolve_model
from reasondistill.models import encode_prompts, load_model, load_tokenizer, render_prompt
from reasondistill.rollout import generate
from reasondistill.tasks import arith


def no_cache(model, ids, mask, n):
    for _ in range(n):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        nxt = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    path = resolve_model("embedded:student")
    model, tok = load_model(path).eval(), load_tokenizer(path)
    prompts = [render_prompt(tok, p["question"]) for p in arith.generate("test", a.batch, seed=0)]
    ids_list = encode_prompts(tok, prompts)
    P = max(map(len, ids_list))
    ids = torch.tensor([[tok.pad_token_id] * (P - len(x)) + x for x in ids_list])
    mask = (torch.arange(P)[None] >= torch.tensor([P - len(x) for x in ids_list])[:, None]).long()
    never = len(tok) + 10  # an id that is never sampled: no early stop
    runs = {
        "reasondistill generate (KV cache)": lambda: generate(model, tok, ids_list, max_new_tokens=a.new_tokens,
                                                              do_sample=False, eos_token_id=[never]),
        "transformers model.generate": lambda: model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
            do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None),
        "no KV cache (recompute)": lambda: no_cache(model, ids, mask, a.new_tokens),
    }
    best = {}
    with torch.no_grad():
        for name, fn in runs.items():
            fn()  # warm-up
            times = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            best[name] = a.batch * a.new_tokens / min(times)
    base = best["reasondistill generate (KV cache)"]
    print(f"batch {a.batch} x {a.new_tokens} new tokens, embedded student, {a.threads} thread(s), best of {a.repeats}")
    for name, tps in best.items():
        print(f"{name:<36} {tps:>10,.0f} tok/s   reasondistill / this = {base / tps:5.2f}x")


if __name__ == "__main__":
    main()
