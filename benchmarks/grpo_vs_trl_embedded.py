"""TRL's GRPOTrainer on the same student, problems and setting as ``configs/grpo_embedded.yaml``,
so the two held-out accuracies can be compared (TRL is the optional extra ``.[bench]``).

    python benchmarks/grpo_vs_trl_embedded.py --output-dir runs/trl_grpo
    reasondistill train grpo --config configs/grpo_embedded.yaml
    reasondistill eval --model runs/trl_grpo/final --benchmark arith --limit 400 --max-new-tokens 48
    reasondistill eval --model runs/grpo_embedded/final --benchmark arith --limit 400 --max-new-tokens 48

TRL counts completions in its batch: 256 = our 32 prompts x 8 answers.
"""

import argparse
import time
from pathlib import Path

import torch


def main() -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from reasondistill.models import resolve_model
    from reasondistill.rewards import accuracy_reward
    from reasondistill.tasks import arith

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="runs/trl_grpo")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.output_dir)
    path = resolve_model("embedded:student")
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = arith.generate("train", 32 * a.steps, seed=0)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"]}
                              for r in rows])
    cfg = GRPOConfig(output_dir=str(out / "trainer"), max_steps=a.steps, learning_rate=1e-4,
                     lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=0,
                     bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, report_to="none",
                     logging_steps=10, save_strategy="no", eval_strategy="no", disable_tqdm=True,
                     per_device_train_batch_size=256, num_generations=8, max_completion_length=48, temperature=1.0,
                     beta=0.0, loss_type="dapo", scale_rewards="group", log_completions=False)
    t0 = time.time()
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy_reward], args=cfg, train_dataset=data,
                          processing_class=tok)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    print(f"wall {time.time() - t0:.1f} s; reward (first / last logging window) {logs[0]['reward']:.3f} / "
          f"{logs[-1]['reward']:.3f}")
    trainer.model.save_pretrained(out / "final")
    tok.save_pretrained(str(out / "final"))


if __name__ == "__main__":
    main()
