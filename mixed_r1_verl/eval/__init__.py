"""Offline evaluation: score a model on held-out converted parquet with the training rewards.

python -m mixed_r1_verl.eval data=val.parquet model=CKPT out_dir=eval/ckpt
python -m mixed_r1_verl.eval data=val.parquet generations=saved.jsonl out_dir=eval/saved
python -m mixed_r1_verl.eval compare=[eval/base,eval/ckpt]
"""

from .records import EvalRecord, load_records
from .scoring import score_records, summarize

# The evaluation's `backend` settings (the learning proof's `eval_backend`): auto is vLLM when installed.
BACKENDS = ("auto", "vllm", "hf")

__all__ = ["BACKENDS", "EvalRecord", "load_records", "score_records", "summarize"]
