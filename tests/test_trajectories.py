"""ddo.trajectories: the 'wsd' schedule, branches equal to runs trained through the trunk's
steps, exact counts, stacking, kill -9 in a trunk and in a branch, fingerprints, the plumbing
in the synthetic world, and the 3+ budget path test."""

import copy
import dataclasses
import fractions
import json
import math
import pathlib

import jax
import ml_collections
import numpy as np
import pytest
from etils import epath

from autoscale_jax import pipeline
from autoscale_jax.configs import tiny
from autoscale_jax.data import mixture
from autoscale_jax.data.store import DomainStore
from autoscale_jax.errors import ConfigError
from autoscale_jax.mixing import AutoScaleModel, DDOProblem, PowerLaw
from autoscale_jax.models import row_len
from autoscale_jax.pipeline import ddo, plan, trajectories
from autoscale_jax.train import mesh as mesh_lib, optim, runs, trajectory
from autoscale_jax.train.checkpoint import Checkpointer
from kill_harness import kill_when, start_pipeline


# ------------------------------------------------------------------------------ the schedule
def _wsd(shape: str, fraction: float = 0.2) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(lr=2.0, warmup_steps=10, warmup_ratio=0.0,
                                        schedule='wsd', min_lr_ratio=0.1,
                                        cooldown_fraction=fraction, cooldown_shape=shape))


@pytest.mark.parametrize('shape', ['1-sqrt', 'linear'])
def test_wsd_schedule_at_its_key_steps_matches_a_float64_formula(shape):
  cfg, total = _wsd(shape), 100
  start = optim.cooldown_start(total, cfg.cooldown_fraction)
  assert start == 80

  def want(step: int) -> float:  # float64, written from the definition
    if step < 10:
      return 2.0 * step / 10
    if step < start:
      return 2.0
    frac = min((step - start) / (total - start), 1.0)
    fall = math.sqrt(frac) if shape == '1-sqrt' else frac
    return 0.2 + (2.0 - 0.2) * (1 - fall)

  sched = optim.make_schedule(cfg, total)
  for step in (0, 1, 5, 9, 10, 11, 50, 79, 80, 81, 85, 90, 99, 100):
    np.testing.assert_allclose(float(sched(step)), want(step), rtol=2e-7, atol=1e-7)
  assert float(sched(79)) == 2.0  # exactly the peak until the cooldown starts


def test_cooldown_start_is_exact_integer_arithmetic():
  for total in range(1, 3000):
    assert optim.cooldown_start(total, 0.2) == total - (2 * total + 5) // 10
    assert optim.cooldown_start(total, 0.125) == total - math.floor(
        fractions.Fraction(total, 8) + fractions.Fraction(1, 2))
  with pytest.raises(ConfigError, match='cooldown_fraction.*inside its 10-step warmup'):
    optim.horizon(_wsd('linear', 0.95), 12)
  with pytest.raises(ConfigError, match='config.train.cooldown_shape'):
    optim.check_optimizer(ml_collections.ConfigDict(dict(_wsd('cosine').to_dict(), b1=0.9,
                                                         b2=0.95, eps=1e-8, weight_decay=0.1,
                                                         clip_norm=1.0)))


# ------------------------------------------------------------------------------ fingerprints
def test_wsd_fields_count_only_for_wsd_and_trajectories_have_their_own_fingerprints():
  config, counts = tiny.get_config(), np.array([10, 20, 30, 40])
  base = runs.run_fingerprint(config, counts, 0, 'tok')
  other = copy.deepcopy(config)
  other.train.cooldown_fraction, other.train.cooldown_shape = 0.3, 'linear'
  assert runs.run_fingerprint(other, counts, 0, 'tok') == base  # cosine: the fields do nothing
  config.train.schedule = other.train.schedule = 'wsd'
  wsd = runs.run_fingerprint(config, counts, 0, 'tok')
  assert wsd != base and runs.run_fingerprint(other, counts, 0, 'tok') != wsd
  trunk = runs.run_fingerprint(config, counts, 0, 'tok', trajectories.kind(3))
  branch = runs.run_fingerprint(config, counts, 0, 'tok', trajectories.kind(3, trunk, 7))
  assert len({wsd, trunk, branch}) == 3
  assert runs.run_fingerprint(config, counts, 0, 'tok', trajectories.kind(3, trunk, 8)) != branch


# ------------------------------------------------------------------------------ the layout
def test_branches_hold_exactly_the_trunks_prefix_at_whole_batches():
  config = tiny.get_config()
  config.train.batch_size = 16
  trunks = [np.array([500, 500, 500, 500]), np.array([100, 500, 500, 500]),
            np.array([1500, 500, 500, 0])]
  sizes = [8_000 * 64 // 64, 300_000 // 3, 128_000]
  warmup, points = trajectories.layout(config, sizes, trunks)
  base_small = round(2000 * sizes[0] / (sizes[-1] * 16))
  assert warmup == math.ceil(0.1 * base_small)
  for c, entry in zip(trunks, points):
    assert entry[sizes[-1]].branch_step is None
    np.testing.assert_array_equal(entry[sizes[-1]].counts, c)
    for b in sizes[:-1]:
      p = entry[b]
      assert p.steps == round(c.sum() * b / (sizes[-1] * 16))
      assert p.branch_step == optim.cooldown_start(p.steps, 0.2)
      # An independent count: the sampler's own batches over the branch's steps.
      seen = np.zeros(len(c), np.int64)
      for step in range(p.steps):
        domain, _ = mixture.sample(0, c, np.full(len(c), 10_000), step, 16)
        seen += np.bincount(np.asarray(domain), minlength=len(c))
      np.testing.assert_array_equal(p.counts, seen)
      assert p.counts.sum() == 16 * p.steps


# ------------------------------------------------------------------------------ training
VOCAB, SEQ, BATCH = 256, 32, 16
DOMAINS = ('a', 'b', 'c')


class _Tokenizer:
  vocab_size, hash, special_ids = VOCAB, 'synthetic', None


def _stores() -> dict[str, DomainStore]:
  out, row = {}, row_len('gpt2', SEQ)
  for d, name in enumerate(DOMAINS):
    rng = np.random.default_rng(d)
    p = 1.0 / np.arange(1, VOCAB + 1) ** (1.0 + 0.4 * d)
    rows = rng.choice(VOCAB, size=(308, row), p=p / p.sum()).astype(np.uint16)
    out[name] = DomainStore(name, rows[:300], rows[300:], {'row_len': row})
  return out


def _config() -> ml_collections.ConfigDict:
  c = tiny.get_config()
  c.data.seq_len = SEQ
  c.model.overrides = ml_collections.ConfigDict(dict(num_layers=2, d_model=32, num_heads=2,
                                                     max_len=SEQ))
  c.model.scan_layers = False
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
  c.train.batch_size, c.train.schedule, c.train.warmup_steps = BATCH, 'wsd', 2
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 1, 0, 4
  c.train.async_checkpoint = False
  c.eval.batch_size = 8
  return c


@dataclasses.dataclass
class _Trajectory:
  trunk: runs.Run
  branch: runs.Run
  twin: runs.Run  # the branch's run in another directory: no branch point, trains from step 0


def _trajectory(config, root: epath.Path, name: str, counts, branch_steps: int) -> _Trajectory:
  counts = np.asarray(counts, np.int64)
  kind = trajectories.kind(2)
  fingerprint = runs.run_fingerprint(config, counts, 0, _Tokenizer.hash, kind)
  start = optim.cooldown_start(branch_steps, config.train.cooldown_fraction)
  prefix = np.asarray(mixture.prefix_counts(counts, branch_steps * BATCH), np.int64)
  branch_kind = trajectories.kind(2, fingerprint, start)

  def branch(where: str) -> runs.Run:
    return runs.Run(f'{name} branch', root / where, prefix, 0, stream=counts, warmup=2,
                    kind=branch_kind)
  b = branch(f'{name}-branch')
  trunk = runs.Run(f'{name} trunk', root / f'{name}-trunk', counts, 0, warmup=2, kind=kind,
                   on_step=trajectory.branch_saver(config, [b], _Tokenizer.hash))
  return _Trajectory(trunk, b, branch(f'{name}-twin'))


def _params(config, run_dir: epath.Path, trainer):
  result = json.loads((run_dir / 'result.json').read_text())
  ckpt = Checkpointer(run_dir / 'checkpoints', fingerprint=result['fingerprint'], every=1, keep=2)
  state = ckpt.restore(trainer.abstract_state)[0]
  ckpt.close()
  return jax.device_get(state.params)


def test_branches_equal_runs_through_the_trunks_steps_single_and_stacked(tmp_path):
  config, stores = _config(), _stores()
  trainers = runs.Trainers(config, _Tokenizer(), len(DOMAINS),
                           mesh_lib.make_mesh(config.mesh, jax.devices()[:1]))
  root = epath.Path(tmp_path)
  kw = dict(stores=stores, tokenizer=_Tokenizer(), trainers=trainers)
  # Trunks of 17 (last batch padded) and 15 steps, branching at 6 of 8 and at 8 of 10 steps.
  a = _trajectory(config, root, 'a', [100, 100, 60], 8)

  # Single: the trunk leaves the branch its state at step 6, and nothing more.
  runs.run(config, a.trunk, **kw)
  assert sorted(int(p.name) for p in (a.branch.run_dir / 'checkpoints').iterdir()
                if p.name.isdigit()) == [6]
  got = trajectory.run_branch(config, a.branch, **kw)
  want = runs.run(config, a.twin, **kw)  # 8 steps from scratch: the trunk's 6, then cooldown
  first = json.loads((a.branch.run_dir / 'metrics.jsonl').read_text().splitlines()[0])
  assert first['step'] == 7  # resumed: steps 1-6 were the trunk's
  for key in ('objective', 'val_loss', 'requested_sequences', 'trained_sequences', 'steps'):
    assert got[key] == want[key], key  # bitwise: the same floats
  jax.tree.map(np.testing.assert_array_equal, _params(config, a.branch.run_dir,
                                                      trainers.single),
               _params(config, a.twin.run_dir, trainers.single))
  assert got['trained_sequences'] == a.branch.counts.tolist()  # the exact prefix counts
  assert got['steps'] == 8 and sum(got['trained_sequences']) == 8 * BATCH
  assert [p.name for p in (a.branch.run_dir / 'checkpoints').iterdir() if p.name.isdigit()] == [
      '8']  # the branch point is deleted once the branch finished

  # Stacked: each member writes its own branch point (steps 6 and 8).
  sa = _trajectory(config, root / 'stacked', 'a', [100, 100, 60], 8)
  sb = _trajectory(config, root / 'stacked', 'b', [40, 120, 80], 10)
  runs.run_stacked(config, [sa.trunk, sb.trunk], **kw)
  for t, step in ((sa, 6), (sb, 8)):
    assert [p.name for p in (t.branch.run_dir / 'checkpoints').iterdir()
            if p.name.isdigit()] == [str(step)]
  got = trajectory.run_branch(config, sa.branch, **kw)  # from the stacked trunk's state
  assert got['trained_sequences'] == want['trained_sequences'] == sa.branch.counts.tolist()
  np.testing.assert_allclose(got['objective'], want['objective'], rtol=1e-5)


# ------------------------------------------------------------------------------ the world
def test_synthetic_world_pipeline_with_trajectories(tmp_path):
  """Plumbing only (the world ignores schedules): plans, exact counts, costs, report, compare."""
  config = tiny.get_config()
  config.mode, config.world = 'autoscale', 'synthetic'
  config.data.max_docs, config.data.max_epochs = 30, 4  # a small corpus: no training here
  config.ddo.trajectories, config.ddo.budgets = True, (8_000, 16_000, 32_000)
  config.ddo.replicates = 2
  config.predict.interval_samples = 20
  config.validate.enabled = False
  lines = []
  plan.dry_run(config, lines.append)
  text = '\n'.join(lines)
  assert text.count('ddo trunk 32,000') == 18 and text.count('ddo branch 16,000') == 18
  assert '18 trunks to 32,000 tokens with 36 cooldown branches' in text
  pipeline.dispatch(config, str(tmp_path))
  batch, seq = config.train.batch_size, config.data.seq_len
  plans = {b: json.loads((tmp_path / 'budgets' / str(b) / 'plan.json').read_text())
           for b in config.ddo.budgets}
  trunks = {(r['name'], r['seed']): r for r in plans[32_000]['runs']}
  trained = 0
  for b, p in plans.items():
    assert p['trajectories']
    for r in p['runs']:
      result = json.loads((tmp_path / 'runs' / r['fingerprint'] / 'result.json').read_text())
      assert result['requested_sequences'] == r['counts']  # plan.json says what was trained
      np.testing.assert_allclose(r['quantities'], np.asarray(r['counts']) * seq)
      trunk = trunks[r['name'], r['seed']]
      if b == 32_000:
        assert 'trunk' not in r['trajectory'] and r['trained_tokens'] == sum(r['counts']) * seq
      else:
        assert r['trajectory']['trunk'] == trunk['fingerprint']
        steps = sum(r['counts']) // batch
        assert sum(r['counts']) == steps * batch  # whole batches
        np.testing.assert_array_equal(
            mixture.prefix_counts(np.array(trunk['counts']), steps * batch), r['counts'])
        assert r['trajectory']['branch_step'] == optim.cooldown_start(steps, 0.2)
        assert r['trained_tokens'] == (steps - r['trajectory']['branch_step']) * batch * seq
      trained += r['trained_tokens']
  names = [d.name for d in config.data.domains]
  args = (config, names, np.ones(4), np.ones(4, bool), seq)
  assert ddo.total_tokens(*args) == trained  # compare's default proxy budget
  assert ddo.cost(*args)[1] > 1.4 * trained
  predictions = json.loads((tmp_path / 'autoscale' / 'predictions.json').read_text())
  assert predictions['path']['verdict'] in ('one path', 'no consistent path')
  report = (tmp_path / 'report' / 'report.md').read_text()
  assert 'Do the optima follow one path?' in report
  assert (f'the DDO proxy runs trained {trained:,} tokens' in report
          and '18 warmup-stable-decay trunks with 36 cooldown branches' in report)


# ------------------------------------------------------------------------------ path test
LAWS = [(0.3, 0.6, 0.5), (0.2, 1.0, 0.4), (0.5, 0.4, 0.6)]


def _problems(bend: float) -> list[DDOProblem]:
  """Three budgets' DDO problems. With the same laws at every budget the optima lie on one path
  exactly (the KKT solution: ln N_i* is affine in ln lambda); `bend` changes the first domain's
  exponent at the middle budget, which moves its optimum off the path."""
  out = []
  for k, n in enumerate((1e5, 2e5, 4e5)):
    fits = [PowerLaw(a, b * (1 + bend) if (k, i) == (1, 0) else b, c,
                     x=(0.2, 0.2, 1.0, 1.0, 3.0, 3.0), residuals=(0.0,) * 6)
            for i, (a, b, c) in enumerate(LAWS)]
    out.append(DDOProblem(np.full(3, n / 3), fits, 0.2, 3.0))
  return out


def test_path_test_separates_one_path_from_a_bend():
  straight = AutoScaleModel.from_ddo(_problems(0.0), 'extrapolate')
  assert straight.residual < 1e-9
  test = straight.path_test(samples=40, noise=0.01, seed=1)
  assert test.p_value == 1.0 and test.verdict == 'one path'  # every null residual is >= 0
  bent = AutoScaleModel.from_ddo(_problems(1.5), 'extrapolate')
  tight = bent.path_test(samples=40, noise=1e-4, seed=1)
  assert tight.p_value == 1 / 41 and tight.verdict == 'no consistent path'
  assert np.all(tight.null < bent.residual)
  loose = bent.path_test(samples=40, noise=0.3, seed=1)  # noise far above the bend
  assert loose.p_value > tight.p_value and np.median(loose.null) > np.median(tight.null)
  with pytest.raises(Exception, match='3 or more budgets'):
    AutoScaleModel.from_ddo(_problems(0.0)[:2]).path_test()


# ------------------------------------------------------------------------------ kill -9
CONFIG_FILE = """
import ml_collections
from autoscale_jax.configs import tiny

def get_config():
  c = tiny.get_config()
  c.mode = 'ddo'
  c.data.domains = tuple(d for d in c.data.domains if d.name in ('code', 'news'))
  c.data.max_docs, c.data.seq_len, c.data.cache_dir = 40, 32, {cache!r}
  c.data.max_epochs = 4
  c.model.overrides = ml_collections.ConfigDict({{'d_model': 32, 'num_heads': 2}})
  c.train.batch_size, c.train.checkpoint_every, c.train.async_checkpoint = 8, 4, False
  c.train.stack_runs = True
  c.ddo.trajectories, c.ddo.budgets = True, (6_400, 12_800)
  return c
"""


def _branches(workdir: pathlib.Path) -> list[dict]:
  path = workdir / 'budgets' / '6400' / 'plan.json'
  return json.loads(path.read_text())['runs'] if path.exists() else []


def _steps(run: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in (run / 'checkpoints').glob('*') if p.name.isdigit())


def test_kill_in_a_trunk_and_in_a_branch_then_resume(tmp_path):
  config = tmp_path / 'config.py'
  config.write_text(CONFIG_FILE.format(cache=str(tmp_path / 'cache')))
  workdir, log = tmp_path / 'work', tmp_path / 'log.txt'
  runs_dir = workdir / 'runs'

  def in_trunk() -> bool:  # a branch point saved, the trunks not finished
    return (not list(runs_dir.glob('*/result.json'))
            and any(_steps(r) for r in runs_dir.glob('*') if not r.name.startswith('stack-')))

  proc = start_pipeline(config, workdir, log)
  kill_when(proc, in_trunk, 'a branch point', log, poll=0.02, timeout=300)

  def in_branch() -> bool:  # one branch finished, another checkpointed past its branch point
    branches = _branches(workdir)
    dirs = [(runs_dir / r['fingerprint'], r['trajectory']['branch_step']) for r in branches]
    return (any((d / 'result.json').exists() for d, _ in dirs)
            and any(not (d / 'result.json').exists() and any(s > k for s in _steps(d))
                    for d, k in dirs))

  proc = start_pipeline(config, workdir, log)
  kill_when(proc, in_branch, 'a branch under way', log, poll=0.02, timeout=300)
  finished = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in runs_dir.glob('*/result.json')}
  proc = start_pipeline(config, workdir, log)
  assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
  for path, (data, mtime) in finished.items():  # never trained again
    assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime
  text = log.read_text()
  assert text.count('resuming 5 stacked runs from the checkpoint') == 1  # the trunks
  for b in (6_400, 12_800):
    plan_json = json.loads((workdir / 'budgets' / str(b) / 'plan.json').read_text())
    for r in plan_json['runs']:
      result = json.loads((runs_dir / r['fingerprint'] / 'result.json').read_text())
      assert result['trained_sequences'] == r['counts']  # exact counts at every budget
      if b == 6_400:  # each branch trained from its branch point on, never from scratch
        assert f"resuming from the checkpoint at step {r['trajectory']['branch_step']} " in text
    assert (workdir / 'budgets' / str(b) / 'optimum.json').exists()
