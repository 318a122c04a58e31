"""Downstream evaluation of trained runs: GPT-2 few-shot through lm-evaluation-harness
(harness.py, the optional `eval` extra) on offline tasks built from pip-shipped text (tasks.py);
BERT fine-tuned on [CLS] (finetune.py, with finetune_data.py, classifier.py and scores.py).

Import the submodules: `from autoscale_jax.evaluate import harness, tasks`; only
harness.evaluate / harness.HarnessLM need lm_eval, and say so in one sentence when it is missing.
"""
