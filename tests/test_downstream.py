"""Downstream scores in the validation stage, for a BERT (configs/bert_tiny.py, shrunk): every
validation run is fine-tuned once from its checkpoint, its scores reach the validation entries,
the downstream block and the report's table, and a rerun evaluates nothing again. (GPT-2 few-shot
scores go through the same path in test_pipeline's end-to-end test.)"""

import json

import numpy as np
import pytest
from etils import epath

from autoscale_jax.configs import bert_tiny
from autoscale_jax.pipeline import validate
from autoscale_jax.pipeline.registry import Experiment
from autoscale_jax.report import tables, verdicts


def _config():
  c = bert_tiny.get_config()
  c.data.max_docs = 60
  c.data.tokenizer.vocab_size = 1024
  c.data.tokenizer.train_chars = 100_000
  c.validate.seeds = 2
  c.validate.eval_every = 0
  c.eval.finetune.max_train_examples = 64
  c.eval.finetune.epochs = 1
  c.eval.finetune.batch_size = 16
  return c


def test_validation_runs_are_fine_tuned_once_and_tabled(tmp_path):
  exp = Experiment(_config(), epath.Path(tmp_path))
  natural = exp.natural[exp.trainable] / exp.natural[exp.trainable].sum()
  mixtures = {'uniform': np.full(3, 1 / 3), 'natural': natural}
  runs = validate.train_mixtures(exp, mixtures, 4096, 'test')
  files = {}
  for name, run in runs.items():
    for s in run['seeds']:
      (path,) = (tmp_path / 'runs' / s['fingerprint']).glob('downstream-*.json')
      record = json.loads(path.read_text())
      files[path] = path.stat().st_mtime_ns
      task = record['tasks']['bbc_topic']
      assert record['settings']['kind'] == 'finetune' and task['train_examples'] == 64
      assert s['downstream'] == {'bbc_topic': task['accuracy']} == record['scores']
      assert 0.0 <= task['accuracy'] <= 1.0 and task['examples'] > 100
  block = verdicts.downstream(runs, 'uniform')
  scores = {n: [s['downstream']['bbc_topic'] for s in r['seeds']] for n, r in runs.items()}
  got = block['tasks']['bbc_topic']
  assert got['natural']['mean'] == pytest.approx(np.mean(scores['natural']))
  d = np.array(scores['natural']) - np.array(scores['uniform'])
  assert got['natural']['vs_reference']['mean'] == pytest.approx(d.mean())
  assert got['uniform']['vs_reference'] is None
  assert block['truncated'] == {'bbc_topic': None}  # fine-tuning truncates no harness request
  lines = tables.downstream(block)
  assert '| mixture | bbc_topic |' in lines and any(l.startswith('| natural |') for l in lines)
  # A second pass reads every evaluation back.
  again = validate.train_mixtures(exp, mixtures, 4096, 'test')
  assert again == runs
  assert {p: p.stat().st_mtime_ns for p in files} == files
