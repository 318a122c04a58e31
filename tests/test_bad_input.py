"""Mistakes a user can make get one sentence naming the field and the fix, before any training,
and leave everything already in the workdir as it was.

CASES is one flat list of (id, setup, expected message regex); append to it. `setup(config,
workdir, tmp)` edits the config (and may write files under `tmp`, e.g. a broken corpus); the
config starts as kill_harness.config() (configs/tiny.py with small data), and the workdir holds
a prepared copy of that data (tokenizer, token stores) plus a marker file. Each case runs
pipeline.dispatch(config, workdir) in this process and must raise a UserError subclass whose
message is one line, ends with '.', and matches the regex. CLI_CASES run the real command line
and check exit status 2, one `error: ...` line on stderr and no traceback; their last field names
packages the command must run without (as if not installed).
"""

import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import subprocess

import ml_collections
import pytest

import kill_harness
from autoscale_jax import pipeline
from autoscale_jax.data import DataError
from autoscale_jax.errors import ConfigError, UserError

DOMAINS = ('code', 'speeches', 'plays', 'news')  # the demo domains of configs/tiny.py


# ------------------------------------------------------------------------ setups
def _set(**fields):
  """Sets config fields: _set(train__lr=-1.0) sets config.train.lr."""
  def setup(config, workdir, tmp):
    del workdir, tmp
    for key, value in fields.items():
      *parents, leaf = key.split('__')
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = value
  return setup


def _weights(**w):
  return _set(train__weights=ml_collections.ConfigDict(w))


def _domain(source: str, *, text_key: str = 'text', files: dict[str, str] | None = None):
  """Replaces the first domain with one reading `source` ({tmp} = the case's temp dir)."""
  def setup(config, workdir, tmp):
    del workdir
    for name, text in (files or {}).items():
      (tmp / name).write_text(text)
    bad = ml_collections.ConfigDict(dict(name='mine', source=source.format(tmp=tmp),
                                         text_key=text_key))
    config.data.domains = (bad, *config.data.domains[1:])
  return setup


def _then(*setups):
  def setup(config, workdir, tmp):
    for s in setups:
      s(config, workdir, tmp)
  return setup


def _tokenizer_file(config, workdir, tmp):
  """The prepared tokenizer (300 tokens) as a tokenizer.json file."""
  del tmp
  config.data.tokenizer.kind = 'file'
  config.data.tokenizer.path = str(workdir / 'tokenizer' / 'tokenizer.json')


def _news_only(config, workdir, tmp):
  del workdir, tmp
  config.train.weights = {'news': 1.0, 'code': 0.0, 'speeches': 0.0, 'plays': 0.0}


def _locked(config, workdir, tmp):
  """Another host's pipeline holds the workdir (a live pid elsewhere cannot be checked)."""
  del config, tmp
  (workdir / 'LOCK').write_text(json.dumps(
      {'host': 'tpu-vm-7', 'pid': 4242, 'since': '2026-11-28T10:00:00Z'}))


JSONL = json.dumps({'text': 'A document. ' * 50}) + '\n'

CASES = [
    # --- the mixture (config.train.weights)
    ('weights_negative', _weights(code=-0.2, speeches=0.4, plays=0.4, news=0.4),
     r"config\.train\.weights has negative or non-finite weights for \['code'\]"),
    ('weights_nan', _weights(code=math.nan, speeches=0.5, plays=0.25, news=0.25),
     r"config\.train\.weights has negative or non-finite weights for \['code'\]"),
    ('weights_inf', _weights(code=math.inf, speeches=0.0, plays=0.0, news=0.0),
     r'config\.train\.weights has negative or non-finite'),
    ('weights_not_summing_to_one', _weights(code=0.5, speeches=0.3, plays=0.3, news=0.3),
     r'config\.train\.weights sums to 1\.4, not 1; rescale'),
    ('weights_unknown_domain', _weights(code=0.5, wikipedia=0.5),
     r"config\.train\.weights names unknown domain\(s\) \['wikipedia'\]"),
    ('weights_unknown_keyword', _set(train__weights='natrual'),
     r"config\.train\.weights is 'natrual'; use 'uniform', 'natural'"),
    # --- the budget
    ('budget_below_one_batch', _set(train__tokens=100),
     r'config\.train\.tokens.*less than one batch.*raise the budget or lower '
     r'config\.train\.batch_size'),
    ('budget_above_the_data', _then(_news_only, _set(train__tokens=20_000 * 32)),
     r"needs 640,000 tokens of domain 'news' but its store holds .*config\.data\.max_epochs"),
    ('budget_not_positive', _set(train__tokens=-5),
     r'config\.train\.tokens must be one or more token budgets > 0'),
    # --- sources
    ('source_glob_matches_nothing', _domain('files:{tmp}/corpus/*.jsonl'),
     r"Domain 'mine': source files:.*/corpus/\*\.jsonl matches no files; fix the glob"),
    ('source_file_missing', _domain('files:{tmp}/missing.jsonl'),
     r"Domain 'mine': source files:.*/missing\.jsonl matches no files"),
    ('source_file_empty', _domain('files:{tmp}/empty.jsonl', files={'empty.jsonl': ''}),
     r"Domain 'mine': .*/empty\.jsonl is empty; remove it or fix the domain's source glob"),
    ('source_unsupported_file', _domain('files:{tmp}/notes.csv', files={'notes.csv': 'a,b\n'}),
     r"Domain 'mine': .*/notes\.csv is not \.txt, \.jsonl"),
    ('jsonl_line_without_text_key',
     _domain('files:{tmp}/c.jsonl', files={'c.jsonl': JSONL + json.dumps({'body': 'x'}) + '\n'}),
     r"Domain 'mine': .*/c\.jsonl line 2 has no field text_key='text' \(fields: \['body'\]\); "
     r"set the domain's text_key"),
    ('jsonl_wrong_text_key', _domain('files:{tmp}/c.jsonl', text_key='content',
                                     files={'c.jsonl': JSONL}),
     r"c\.jsonl line 1 has no field text_key='content'"),
    ('jsonl_line_not_json', _domain('files:{tmp}/c.jsonl', files={'c.jsonl': JSONL + '{oops\n'}),
     r"Domain 'mine': .*/c\.jsonl line 2 is not valid JSON"),
    ('source_too_small_for_validation', _domain('files:{tmp}/c.jsonl', files={'c.jsonl': JSONL}),
     r"Domain 'mine' has 1 non-empty documents.*needs 4 validation sequences"),
    ('source_unknown_prefix', _domain('hf:wikitext'),
     r"Domain 'mine': source 'hf:wikitext' is not files:GLOB, tfds:NAME"),
    ('source_unknown_demo', _domain('demo:wikipedia'),
     r"Domain 'mine': demo:wikipedia is not a demo corpus; use one of demo:code"),
    ('source_unknown_tfds_dataset', _domain('tfds:no_such_dataset_xyz'),
     r"Domain 'mine': TFDS dataset 'no_such_dataset_xyz' (is unknown|needs)"),
    ('data_seq_len_zero', _set(data__seq_len=0),
     r'config\.data\.seq_len is 0; it must be a whole number >= 1'),
    ('data_max_docs_negative', _set(data__max_docs=-1),
     r'config\.data\.max_docs is -1; it must be a whole number >= 0'),
    ('domain_names_repeated', _set(data__domains=(
        ml_collections.ConfigDict(dict(name='a', source='demo:news', text_key='text')),
        ml_collections.ConfigDict(dict(name='a', source='demo:code', text_key='text')))),
     r"config\.data\.domains names 'a' twice"),
    # --- tokenizer
    ('tokenizer_file_missing', _set(data__tokenizer__kind='file',
                                    data__tokenizer__path='/nonexistent/tokenizer.json'),
     r"config\.data\.tokenizer\.path='/nonexistent/tokenizer\.json' is not a tokenizer\.json"),
    ('tokenizer_kind_unknown', _set(data__tokenizer__kind='sentencepiece'),
     r"config\.data\.tokenizer\.kind='sentencepiece' is unknown; use train_bpe"),
    ('tokenizer_vocab_above_model_vocab',
     _then(_tokenizer_file, _set(model__overrides__vocab_size=256)),
     r'the tokenizer has 300 tokens but config\.model\.overrides\.vocab_size is 256'),
    ('tokenizer_without_eos_for_gpt2', _set(data__tokenizer__kind='train_wordpiece'),
     r"config\.data\.tokenizer\.kind='train_wordpiece' has no \['eos'\] token"),
    # --- model
    ('model_family_unknown', _set(model__family='llama'),
     r"config\.model\.family is 'llama'; use one of \['bert', 'gpt2'\]"),
    ('model_size_unknown', _set(model__size='huge'),
     r"config\.model\.size is 'huge'; gpt2 sizes are"),
    ('model_override_unknown', _set(model__overrides__num_experts=8),
     r"config\.model\.overrides has a field the gpt2 config does not know"),
    ('model_layers_not_positive', _set(model__overrides__num_layers=0),
     r'config\.model: GPT2Config\.num_layers=0 must be a whole number >= 1; fix it in '
     r'config\.model\.overrides'),
    ('model_heads_do_not_divide', _set(model__overrides__num_heads=3),
     r'config\.model: GPT2Config\.d_model=128 must be divisible by num_heads=3'),
    ('seq_len_above_context', _set(model__overrides__max_len=16),
     r'config\.data\.seq_len is 32 but the model context \(max_len\) is 16; lower seq_len or '
     r'raise config\.model\.overrides\.max_len'),
    # --- mesh and batch
    ('mesh_does_not_match_devices', _set(mesh__data=3),
     r'config\.mesh: data/fsdp/tensor = \[3, 1, 1\] multiplies to 3 but there are 8 devices'),
    ('mesh_two_minus_ones', _set(mesh__data=-1, mesh__fsdp=-1),
     r'config\.mesh: at most one of data/fsdp/tensor may be -1'),
    ('peak_flops_negative', _set(train__peak_flops=-1.0),
     r'config\.train\.peak_flops is -1\.0; it must be a number >= 0'),
    # --- prediction and validation (checked before DDO trains)
    ('interval_level_above_one', _set(mode='autoscale', predict__interval_level=1.5),
     r'config\.predict\.interval_level is 1\.5; it must be a number > 0 and < 1'),
    ('interval_samples_one', _set(mode='autoscale', predict__interval_samples=1),
     r'config\.predict\.interval_samples is 1; it must be a whole number >= 2'),
    ('noise_negative', _set(mode='autoscale', predict__noise=-0.01),
     r'config\.predict\.noise is -0\.01; it must be a number >= 0'),
    ('validate_seeds_zero', _set(mode='autoscale', validate__enabled=True, validate__seeds=0),
     r'config\.validate\.seeds is 0; it must be a whole number >= 1'),
    ('predict_pinned_unknown', _set(mode='autoscale', predict__pinned='freeze'),
     r"config\.predict\.pinned is 'freeze'; use 'extrapolate'"),
    ('check_budget_not_positive', _set(mode='autoscale', ddo__check_budgets=(-5,)),
     r'config\.ddo\.check_budgets must be one or more token budgets > 0'),
    ('warmup_ratio_one', _set(train__warmup_ratio=1.0),
     r'config\.train\.warmup_ratio is 1\.0; it must be a number >= 0 and < 1'),
    ('perplexity_unknown', _set(eval__perplexity='word'),
     r"config\.eval\.perplexity is 'word'; use 'token'"),
    ('compare_method_unknown', _set(mode='compare', compare__methods=('regmixx', 'uniform')),
     r"config\.compare\.methods names unknown method\(s\) \['regmixx'\]"),
    ('compare_doremi_smoothing_above_one', _set(mode='compare', compare__doremi_smoothing=2.0),
     r'config\.compare\.doremi_smoothing is 2\.0; it must be a number >= 0 and <= 1'),
    ('compare_doremi_reference_unknown', _set(mode='compare', compare__doremi_reference='pile'),
     r"config\.compare\.doremi_reference is 'pile'; use 'uniform', 'natural' or a dict"),
    ('compare_swarm_too_small', _set(mode='compare', compare__swarm_runs=1),
     r'config\.compare\.swarm_runs is 1; it must be a whole number >= 2'),
    ('compare_swarm_below_the_mixing_law', _set(mode='compare', compare__swarm_runs=3),
     r'config\.compare\.swarm_runs: the swarm has 3 runs, but the mixing law needs at least '
     r'm \+ 1 = 5 mixtures'),
    ('validate_eval_every_negative',
     _set(mode='autoscale', validate__enabled=True, validate__eval_every=-5),
     r'config\.validate\.eval_every is -5; it must be a whole number >= 0'),
    ('batch_not_divisible_by_data_parallel', _set(train__batch_size=12),
     r'config\.train\.batch_size / grad_accum = 12 is not divisible by the data-parallel size 8'),
    ('batch_not_divisible_by_grad_accum', _set(train__grad_accum=3),
     r'config\.train\.batch_size \(8\) must be divisible by config\.train\.grad_accum \(3\)'),
    ('eval_batch_not_divisible_by_data_parallel', _set(eval__batch_size=12),
     r'config\.eval\.batch_size \(12\) is not divisible by the data-parallel size 8'),
    # --- optimizer, schedule, loop, objective
    ('schedule_unknown', _set(train__schedule='step'),
     r"config\.train\.schedule is 'step'; use one of cosine, linear, constant"),
    ('lr_negative', _set(train__lr=-1e-3),
     r'config\.train\.lr is -0\.001; it must be a number > 0'),
    ('lr_nan', _set(train__lr=math.nan), r'config\.train\.lr is nan; it must be a number > 0'),
    ('warmup_negative', _set(train__warmup_steps=-1),
     r'config\.train\.warmup_steps is -1; it must be a whole number >= 0'),
    ('min_lr_ratio_above_one', _set(train__min_lr_ratio=2.0),
     r'config\.train\.min_lr_ratio is 2\.0; it must be a number >= 0 and <= 1'),
    ('beta_out_of_range', _set(train__b2=1.5),
     r'config\.train\.b2 is 1\.5; it must be a number >= 0 and < 1'),
    ('log_every_zero', _set(train__log_every=0),
     r'config\.train\.log_every is 0; it must be a whole number >= 1'),
    ('checkpoint_every_zero', _set(train__checkpoint_every=0),
     r'config\.train\.checkpoint_every is 0; it must be a whole number >= 1'),
    ('objective_unknown', _set(eval__objective='median_ppl'),
     r"config\.eval\.objective is 'median_ppl'; use one of mean_ppl"),
    ('objective_weights_unknown_domain',
     _set(eval__objective='weighted_loss',
          eval__objective_weights=ml_collections.ConfigDict({'wiki': 1.0})),
     r"config\.eval\.objective_weights names unknown domain\(s\) \['wiki'\]"),
    # --- the pipeline (modes, DDO budgets, prediction, validation, the workdir)
    ('mode_unknown', _set(mode='autoscal'), r"config\.mode is 'autoscal'; use one of prepare"),
    ('workdir_locked', _locked,
     r'is in use by another pipeline \(host tpu-vm-7, pid 4242.*delete .*LOCK'),
    ('ddo_budget_below_one_batch', _set(mode='ddo', ddo__budgets=(128, 8_192)),
     r'config\.ddo\.budgets \(128 tokens\): run .* less than one batch'),
    ('ddo_budget_above_the_data', _set(mode='ddo', ddo__budgets=(8_192, 4_000_000)),
     r"config\.ddo\.budgets \(4,000,000 tokens\): run .* needs .* tokens of domain '.*' but its "
     r'store holds'),
    ('ddo_budgets_not_positive', _set(mode='ddo', ddo__budgets=(0, 8_192)),
     r'config\.ddo\.budgets must be one or more token budgets > 0'),
    ('ddo_base_weights_zero', _set(mode='ddo', ddo__base_weights={
        'code': 0.0, 'speeches': 0.5, 'plays': 0.25, 'news': 0.25}),
     r'config\.ddo\.base_weights must give every domain a weight > 0'),
    ('autoscale_one_budget', _set(mode='autoscale', ddo__budgets=(8_192,)),
     r'config\.ddo\.budgets has 1 budget; AutoScale needs two or more'),
    ('validate_target_not_predicted', _set(mode='autoscale', validate__targets=(99_999,)),
     r'config\.validate\.targets \[99999\] are not among config\.predict\.targets'),
    ('validate_baseline_named_predicted',
     _set(mode='autoscale',
          validate__baselines=ml_collections.ConfigDict({'predicted': 'natural'})),
     r"config\.validate\.baselines may not be named 'predicted'"),
    ('predict_without_ddo_results', _set(mode='predict'),
     r'no DDO result for budget\(s\) \[8192, 16384\] in .*; run --config\.mode=ddo'),
]


# ------------------------------------------------------------------------ harness
@pytest.fixture(scope='module')
def prepared(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp('prepared')
  kill_harness.prepare(workdir)
  (workdir / 'runs' / 'earlier').mkdir(parents=True)
  (workdir / 'runs' / 'earlier' / 'result.json').write_text('{"objective": 1.0}\n')
  return workdir


def _snapshot(workdir: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in workdir.rglob('*') if p.is_file()}


def _check_message(message: str, pattern: str) -> None:
  assert '\n' not in message and message.rstrip().endswith('.'), message
  assert re.search(pattern, message), f'{message!r} does not match {pattern!r}'
  assert 'Traceback' not in message


@pytest.mark.parametrize('setup,pattern', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_sentence(setup, pattern, prepared, tmp_path):
  workdir = tmp_path / 'work'
  shutil.copytree(prepared, workdir)
  before = _snapshot(workdir)
  config = kill_harness.config()
  setup(config, workdir, tmp_path)
  with pytest.raises(UserError) as e:
    pipeline.dispatch(config, str(workdir))
  assert isinstance(e.value, (ConfigError, DataError)), type(e.value)
  _check_message(str(e.value), pattern)
  after = _snapshot(workdir)
  assert {k: after.get(k) for k in before} == before  # nothing there before was touched
  assert not list((workdir / 'runs').glob('*/checkpoints'))  # no training started


CLI_CASES = [
    ('cli_weights_keyword', ['--config.train.weights=equal'],
     r"config\.train\.weights is 'equal'; use 'uniform', 'natural'", ()),
    ('cli_mesh', ['--config.mesh.data=3'], r'multiplies to 3 but there are 8 devices', ()),
    ('cli_model_family', ['--config.model.family=llama'], r"config\.model\.family is 'llama'",
     ()),
    ('cli_model_dropout', ['--config.model.dropout=2.0'],
     r'config\.model: GPT2Config\.dropout=2\.0 must be in \[0, 1\).*set config\.model\.dropout',
     ()),
    # The later --workdir flag wins over the prepared one kill_harness.command passes.
    ('cli_workdir_cannot_be_created', ['--workdir=/proc/x'],
     r"--workdir='/proc/x' cannot be created or written \(FileNotFoundError: .*\); choose a "
     r'writable location', ()),
    ('cli_gs_workdir_without_gcsfs', ['--workdir=gs://bucket/wd'],
     r"--workdir='gs://bucket/wd' needs the gcsfs package for gs:// paths.*; pip install gcsfs",
     ('gcsfs',)),
    ('cli_gs_report_without_gcsfs', ['--workdir=gs://bucket/wd', '--config.mode=report'],
     r"--workdir='gs://bucket/wd' needs the gcsfs package for gs:// paths.*; pip install gcsfs",
     ('gcsfs',)),
    ('cli_tfds_source_without_tfds', ['--config.data.domains[0].source=tfds:wikipedia'],
     r"Domain 'code': source tfds:wikipedia needs TensorFlow Datasets.*; pip install "
     r'"autoscale_jax\[tfds\]"', ('tensorflow_datasets',)),
]


def _without(packages, folder: pathlib.Path) -> dict[str, str]:
  """kill_harness.env() in which importing `packages` fails as if they were not installed."""
  env = kill_harness.env()
  for package in packages:
    (folder / package).mkdir(parents=True)
    (folder / package / '__init__.py').write_text(
        'raise ModuleNotFoundError(f"No module named {__name__!r}", name=__name__)\n')
  env['PYTHONPATH'] = os.pathsep.join((str(folder), env['PYTHONPATH']))
  return env


@pytest.mark.parametrize('flags,pattern,without', [c[1:] for c in CLI_CASES],
                         ids=[c[0] for c in CLI_CASES])
def test_bad_input_on_the_command_line_exits_2_without_traceback(flags, pattern, without,
                                                                 prepared, tmp_path):
  workdir = tmp_path / 'work'
  shutil.copytree(prepared, workdir)
  before = _snapshot(workdir)
  proc = subprocess.run(kill_harness.command(workdir, *flags),
                        env=_without(without, tmp_path / 'hidden'), cwd=kill_harness.ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr + proc.stdout
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1, proc.stderr[-3000:]
  _check_message(errors[0], pattern)
  after = _snapshot(workdir)
  assert {k: after.get(k) for k in before} == before
