"""DistiLLM-2 (Ko et al. 2025) as the VCRD paper runs it: a preset of ``vcrd`` with ``weights=constant``.

Skew KL on the teacher's responses plus skew reverse KL on the student's responses, every token
weighted 1 (validity_calibrated_distillation.md, Tables 1-4 and Table 5's LV-SKL+LV-SRKL row with
w^T = w^S = 1), on the same prepared rollouts, normaliser and switches as ``vcrd``; no judge is
built or run. Deviation: DistiLLM-2's own contrastive schedule and its curriculum over alpha are
not reproduced; this is the constant-weight objective the VCRD paper compares against.

    reasondistill train distillm2 rollouts=runs/vcrd/rollouts.jsonl
"""

from __future__ import annotations

from dataclasses import dataclass

from . import vcrd


@dataclass
class Config(vcrd.Config):
    weights: str = "constant"
    """constant: w = 1 on both prefix kinds (DistiLLM-2); validity turns it into VCRD."""


prepare, loss, setup, required_fields = vcrd.prepare, vcrd.loss, vcrd.setup, vcrd.required_fields
