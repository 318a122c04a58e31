"""Run fingerprints are stable: a finished run is found again (never retrained) after the code
or the config gains fields. The values were recorded with the code that wrote the first
workdirs; a change here retrains every user's finished runs, so it must be deliberate."""

import copy
import importlib

import ml_collections
import numpy as np
import pytest

from autoscale_jax.train import runs

TOKENIZER_HASH = 'tokhash123'
# The settings the first version's configs had where today's configs differ (a changed setting
# is a different run, with a new fingerprint, as it should be).
FIRST = {'tiny': {'train.warmup_steps': 4}, 'demo': {'train.warmup_steps': 20},
         'gpt2_small': {'data.val_sequences': 128}}
# (config, counts, seed) -> fingerprint, as the first version computed it.
RECORDED = [
    ('tiny', [10, 20, 30, 40], 0, '3a61ef51e6fbbf3b'),
    ('tiny', [7, 7, 7, 7], 3, 'f0d1e86cbceb9b1e'),
    ('demo', [10, 20, 30, 40], 0, '48eb452a622d15bd'),
    ('demo', [7, 7, 7, 7], 3, '6a77e8792861c443'),
    ('gpt2_small', [10, 20, 30, 40, 50, 60, 70], 0, 'e4affe09818eaa0b'),
    ('gpt2_small', [7] * 7, 3, '78dfdc12b19729d6'),
    ('gpt2_large', [10, 20, 30, 40, 50, 60, 70], 0, '1e6096b1bd126416'),
    ('gpt2_large', [7] * 7, 3, 'd14e0c68a72a67a3'),
    ('bert_base', [10, 20, 30, 40, 50, 60, 70], 0, 'eb71e00e73a09eb4'),
    ('bert_base', [7] * 7, 3, '5c916354fddf3506'),
]


def load_config(name: str, first: bool = False) -> ml_collections.ConfigDict:
  """Today's config `name`, or with first=True as the first version had it."""
  config = importlib.import_module(f'autoscale_jax.configs.{name}').get_config()
  for path, value in (FIRST.get(name, {}) if first else {}).items():
    section, field = path.split('.')
    config[section][field] = value
  return config


@pytest.mark.parametrize('name,counts,seed,expected', RECORDED)
def test_fingerprints_equal_the_recorded_values(name, counts, seed, expected):
  config = load_config(name, first=True)
  assert runs.run_fingerprint(config, np.array(counts), seed, TOKENIZER_HASH) == expected


def test_what_does_not_shape_a_run_leaves_the_fingerprint_alone():
  config = load_config('tiny')
  counts = np.array([10, 20, 30, 40])
  base = runs.run_fingerprint(config, counts, 0, TOKENIZER_HASH)
  changed = copy.deepcopy(config)
  changed.train.log_every, changed.train.eval_every = 1, 3
  changed.train.checkpoint_every, changed.train.stack_runs = 2, False
  changed.seed = 7  # the run's own seed is what counts, not the config's
  assert runs.run_fingerprint(changed, counts, 0, TOKENIZER_HASH) == base


def test_fields_added_later_count_only_away_from_their_first_value():
  config = load_config('tiny', first=True)
  counts = np.array([10, 20, 30, 40])
  base = runs.run_fingerprint(config, counts, 0, TOKENIZER_HASH)
  other = {('model', 'scan_unroll'): 0, ('model', 'attention_impl'): 'cudnn',
           ('train', 'warmup_ratio'): 0.1, ('eval', 'perplexity'): 'sequence'}
  assert set(other) == set(runs.LATER_FIELDS)
  for (section, field), legacy in runs.LATER_FIELDS.items():
    at_legacy = copy.deepcopy(config)
    at_legacy[section][field] = legacy
    assert runs.run_fingerprint(at_legacy, counts, 0, TOKENIZER_HASH) == base
    changed = copy.deepcopy(config)
    changed[section][field] = other[section, field]
    if field == 'warmup_ratio':  # acts only without a fixed warmup_steps
      assert runs.run_fingerprint(changed, counts, 0, TOKENIZER_HASH) == base
      changed.train.warmup_steps = 0
    assert runs.run_fingerprint(changed, counts, 0, TOKENIZER_HASH) != base
  for field, value in (('lr', 1e-3), ('batch_size', 8)):
    changed = copy.deepcopy(config)
    changed.train[field] = value
    assert runs.run_fingerprint(changed, counts, 0, TOKENIZER_HASH) != base
  assert runs.run_fingerprint(config, counts, 1, TOKENIZER_HASH) != base
  synthetic = copy.deepcopy(config)
  synthetic.world = 'synthetic'  # a synthetic result is never found as a trained one
  assert runs.run_fingerprint(synthetic, counts, 0, TOKENIZER_HASH) != base
