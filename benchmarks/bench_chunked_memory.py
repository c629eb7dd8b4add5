"""Peak memory of reverse KL, forward + backward, at a real vocabulary: plain vs chunked.

    python benchmarks/bench_chunked_memory.py                      # defaults below, ~1-2 min
    python benchmarks/bench_chunked_memory.py --tokens 256 --chunk-size 64 128

"plain" materialises ``[N, V]`` float32 logits for both models and calls
``losses.reverse_kl``; "chunked" calls ``losses.chunked_divergence`` on the hidden states and
lm_head weights. Each variant runs in its own subprocess and reports its peak resident set
size (``resource.getrusage(...).ru_maxrss``; tracemalloc does not see torch's allocations).
"over setup" subtracts the peak measured after the inputs (hidden states, both lm_head
weights) were built: the memory the loss and its backward needed. It includes the W_s
gradient (V x Hs x 4 bytes, 519 MiB at the defaults) that every variant must hold; "excl.
grad" leaves it out, which is the part chunking addresses: for "plain" it grows linearly with
the number of tokens, for "chunked" it depends only on the chunk size. Both variants must
agree on the loss and the student-weight gradient norm, which the table also prints.
Memory is in MiB.

Defaults: V = 151,936 (Qwen2.5), student hidden 896 (Qwen2.5-0.5B), teacher hidden 1536
(Qwen2.5-1.5B) -- sizes a 2-core CPU can do in seconds -- and 512 token positions.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_variant(args) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from reasondistill import losses

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    N, V = args.tokens, args.vocab
    hs = torch.randn(N, args.student_hidden, generator=g).requires_grad_(True)  # (N, Hs)
    ht = torch.randn(N, args.teacher_hidden, generator=g)  # (N, Ht)
    # scaled in place: a temporary copy would inflate the setup peak that is subtracted below
    ws = torch.randn(V, args.student_hidden, generator=g).mul_(0.05).requires_grad_(True)
    wt = torch.randn(V, args.teacher_hidden, generator=g).mul_(0.05)
    mask = torch.ones(1, N)
    setup = _rss_mb()

    t0 = time.perf_counter()
    if args.variant == "plain":
        student_logits = hs @ ws.T  # (N, V)
        with torch.no_grad():
            teacher_logits = ht @ wt.T  # (N, V)
        kl = losses.reverse_kl(student_logits[None], teacher_logits[None])  # (1, N)
    else:
        kl = losses.chunked_divergence(
            hs[None], ht[None], ws, wt, mask, "reverse_kl", chunk_size=args.chunk_size
        )  # (1, N)
    loss = losses.masked_mean(kl, mask)
    loss.backward()
    seconds = time.perf_counter() - t0
    return {
        "variant": args.variant,
        "chunk_size": args.chunk_size if args.variant == "chunked" else None,
        "peak_mb": _rss_mb(),
        "setup_mb": setup,
        "seconds": seconds,
        "loss": loss.item(),
        "grad_norm": ws.grad.norm().item(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--student-hidden", type=int, default=896)
    p.add_argument("--teacher-hidden", type=int, default=1536)
    p.add_argument("--tokens", type=int, default=512, help="B * T token positions")
    p.add_argument("--chunk-size", type=int, nargs="+", default=[128])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variant", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.variant:  # child process: one measurement, JSON on stdout
        if isinstance(args.chunk_size, list):
            args.chunk_size = args.chunk_size[0]
        print(json.dumps(run_variant(args)))
        return

    base = [sys.executable, __file__, "--vocab", str(args.vocab), "--tokens", str(args.tokens),
            "--student-hidden", str(args.student_hidden), "--teacher-hidden",
            str(args.teacher_hidden), "--threads", str(args.threads)]
    runs = [base + ["--variant", "plain"]]
    runs += [base + ["--variant", "chunked", "--chunk-size", str(c)] for c in args.chunk_size]
    results = []
    for cmd in runs:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))

    print(f"reverse KL forward+backward, N={args.tokens} tokens, V={args.vocab}, "
          f"student hidden {args.student_hidden}, teacher hidden {args.teacher_hidden}, "
          f"float32, {args.threads} threads")
    grad_mb = args.vocab * args.student_hidden * 4 / 2**20
    head = (f"{'variant':<16}{'peak RSS':>10}{'over setup':>12}{'excl. grad':>12}{'time s':>9}"
            f"{'loss':>13}{'|grad W_s|':>13}")
    print(head)
    print("-" * len(head))
    for r in results:
        name = r["variant"] + (f" c={r['chunk_size']}" if r["chunk_size"] else "")
        r["over"] = r["peak_mb"] - r["setup_mb"]
        print(f"{name:<16}{r['peak_mb']:>10.0f}{r['over']:>12.0f}{r['over'] - grad_mb:>12.0f}"
              f"{r['seconds']:>9.2f}{r['loss']:>13.8f}{r['grad_norm']:>13.8f}")
    plain = results[0]
    for r in results[1:]:
        excl = (plain["over"] - grad_mb) / max(r["over"] - grad_mb, 1.0)
        over = plain["over"] / r["over"]
        print(f"plain / chunked c={r['chunk_size']}: peak RSS "
              f"{plain['peak_mb'] / r['peak_mb']:.2f}x, over setup {over:.2f}x, "
              f"excl. grad {excl:.2f}x; time chunked / plain "
              f"{r['seconds'] / plain['seconds']:.2f}x")


if __name__ == "__main__":
    main()
