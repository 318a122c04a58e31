"""GPT-2 and BERT: causality, sizes, learnability, MLM masking, layouts, sharding and FLOPs."""

import functools
import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from autoscale_jax.models import bert, gpt2, layers

VOCAB = 128
SEQ = 16


def gpt2_tiny(**overrides) -> gpt2.GPT2Config:
  return gpt2.config_for('tiny', **{'vocab_size': VOCAB, 'max_len': 64, 'd_model': 64, **overrides})


def bert_tiny(**overrides) -> bert.BertConfig:
  return bert.config_for('tiny', **{'vocab_size': VOCAB, 'max_len': 64, 'd_model': 64, 'd_ff': 256,
                                    'dropout': 0.0, **overrides})


def bert_tokens(rng: jax.Array, batch: int, length: int) -> jax.Array:
  """[CLS] words [SEP] [PAD]... with 0..3 trailing pads per row."""
  cfg = bert_tiny()
  words_key, pad_key = jax.random.split(rng)
  tokens = jax.random.randint(words_key, (batch, length), 104, VOCAB, jnp.int32)
  ends = length - 1 - jax.random.randint(pad_key, (batch, 1), 0, 4)
  pos = jnp.arange(length)[None]
  tokens = jnp.where(pos == ends, cfg.sep_id, jnp.where(pos > ends, cfg.pad_id, tokens))
  return tokens.at[:, 0].set(cfg.cls_id)


def init_params(module: nn.Module) -> dict:
  tokens = jnp.zeros((1, SEQ), jnp.int32)
  return jax.jit(lambda t: nn.unbox(module.init(jax.random.key(0), t)['params']))(tokens)


# Params depend on neither dropout, remat, dtype nor sequence length: one init per family.
@pytest.fixture(scope='module')
def gpt2_params() -> dict:
  return init_params(gpt2.GPT2(gpt2_tiny()))


@pytest.fixture(scope='module')
def bert_params() -> dict:
  return init_params(bert.BERT(bert_tiny()))


def test_gpt2_is_causal(gpt2_params):
  module = gpt2.GPT2(gpt2_tiny())
  tokens = jax.random.randint(jax.random.key(1), (2, SEQ), 0, VOCAB)
  params = gpt2_params
  apply = jax.jit(module.apply)
  base = apply({'params': params}, tokens)
  for t in (0, 5, SEQ - 2):
    changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 7) % VOCAB)
    logits = apply({'params': params}, changed)
    np.testing.assert_allclose(logits[:, :t + 1], base[:, :t + 1], atol=1e-6)
    assert not np.allclose(logits[:, t + 1:], base[:, t + 1:])


def test_published_parameter_counts():
  small = gpt2.param_count(gpt2.config_for('small'))
  large = gpt2.param_count(gpt2.config_for('large'))
  encoder = bert.param_count(bert.config_for('base', mlm_head=False, pooler=True))
  no_pooler = bert.param_count(bert.config_for('base', mlm_head=False))
  with_head = bert.param_count(bert.config_for('base'))
  print(f'GPT-2 small {small:,}  GPT-2 large {large:,}  BERT-base encoder {encoder:,}  '
        f'BERT-base + MLM head {with_head:,}')
  assert small == 124_439_808
  assert large == 774_030_080
  # The published BERT-base count includes the pooler (a d x d dense with bias).
  assert encoder == 109_482_240
  d, vocab = 768, 30522
  assert no_pooler == encoder - d * d - d
  # MLM head: transform dense, its LayerNorm and the decoder bias (the decoder weight is tied).
  assert with_head == no_pooler + d * d + d + 2 * d + vocab


def fit_one_batch(loss_fn, params, batch, steps: int, lr: float) -> tuple[float, float]:
  """Plain Adam on a fixed batch and key; returns the first and last mean token loss."""
  opt = optax.adam(lr)

  def mean_loss(p):
    loss_sum, count = loss_fn(p, batch, jax.random.key(7), train=True)
    return loss_sum.sum() / count.sum()

  @jax.jit
  def step(p, state):
    loss, grads = jax.value_and_grad(mean_loss)(p)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(p, updates), state, loss

  state = opt.init(params)
  losses = []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return losses[0], losses[-1]


def test_gpt2_fits_one_batch(gpt2_params):
  module = gpt2.GPT2(gpt2_tiny())
  tokens = jax.random.randint(jax.random.key(2), (4, SEQ + 1), 0, VOCAB)
  first, last = fit_one_batch(functools.partial(gpt2.per_example_loss, module), gpt2_params,
                              {'tokens': tokens}, steps=150, lr=3e-3)
  print(f'GPT-2 tiny loss {first:.3f} -> {last:.3f}')
  assert last <= 0.1 * first


def test_bert_fits_one_batch(bert_params):
  module = bert.BERT(bert_tiny())
  tokens = bert_tokens(jax.random.key(3), 8, 32)
  first, last = fit_one_batch(functools.partial(bert.per_example_loss, module), bert_params,
                              {'tokens': tokens}, steps=150, lr=3e-3)
  print(f'BERT tiny loss {first:.3f} -> {last:.3f}')
  assert last <= 0.1 * first


def test_bert_loss_scores_masked_positions_only(bert_params):
  cfg = bert_tiny()
  module = bert.BERT(cfg)
  tokens = bert_tokens(jax.random.key(4), 4, 32)
  params = bert_params
  rng = jax.random.key(5)
  example_mask = jnp.array([1.0, 1.0, 0.0, 1.0])
  loss = jax.jit(functools.partial(bert.per_example_loss, module, train=False))
  loss_sum, count = loss(params, {'tokens': tokens, 'mask': example_mask}, rng)
  # Recompute by hand with the same masking key the loss derives from rng.
  inputs, targets, weights = bert.mask_tokens(
      jax.random.split(rng)[0], tokens, vocab_size=cfg.vocab_size, mask_id=cfg.mask_id,
      special_ids=cfg.special_ids)
  np.testing.assert_allclose(count, weights.sum(-1) * example_mask)
  assert count[2] == 0 and loss_sum[2] == 0
  logits = jax.jit(module.apply)({'params': params}, inputs)
  expected, _ = layers.summed(layers.token_cross_entropy(logits, targets, weights, example_mask))
  np.testing.assert_allclose(loss_sum, expected, rtol=1e-5)
  # Arbitrary logits and targets at unchosen positions leave the loss unchanged.
  unchosen = (weights == 0)[..., None]
  noisy = jnp.where(unchosen, 10 * jax.random.normal(jax.random.key(6), logits.shape), logits)
  other_targets = jnp.where(weights == 0, (targets + 1) % VOCAB, targets)
  perturbed, _ = layers.summed(layers.token_cross_entropy(noisy, other_targets, weights,
                                                            example_mask))
  np.testing.assert_allclose(perturbed, expected, rtol=1e-6)
  # Evaluation with a fixed key is deterministic.
  again, _ = loss(params, {'tokens': tokens, 'mask': example_mask}, rng)
  np.testing.assert_array_equal(again, loss_sum)


def test_mask_tokens_statistics():
  vocab, mask_id, specials = 1000, 103, (0, 100, 101, 102, 103)
  tokens = jax.random.randint(jax.random.key(8), (64, 512), 0, vocab, jnp.int32)
  tokens = tokens.at[:, 0].set(101).at[:, -9].set(102).at[:, -8:].set(0)
  mask = jax.jit(functools.partial(bert.mask_tokens, vocab_size=vocab, mask_id=mask_id,
                                   special_ids=specials))
  inputs, targets, weights = mask(jax.random.key(9), tokens)
  np.testing.assert_array_equal(targets, tokens)
  special = np.isin(np.asarray(tokens), specials)
  chosen = np.asarray(weights) == 1.0
  assert set(np.unique(weights)) <= {0.0, 1.0}
  assert not (chosen & special).any()
  np.testing.assert_array_equal(np.asarray(inputs)[~chosen], np.asarray(tokens)[~chosen])
  assert abs(chosen.sum() / (~special).sum() - 0.15) < 0.01
  picked_in, picked_orig = np.asarray(inputs)[chosen], np.asarray(tokens)[chosen]
  to_mask = picked_in == mask_id
  kept = picked_in == picked_orig
  randomized = ~to_mask & ~kept
  assert abs(to_mask.mean() - 0.8) < 0.02
  assert abs(kept.mean() - 0.1) < 0.02
  assert abs(randomized.mean() - 0.1) < 0.02
  assert not np.isin(picked_in[randomized], specials).any()
  assert picked_in[randomized].max() < vocab


def unroll(scanned: dict, num_layers: int) -> dict:
  """Scanned params (leading 'layers' axis under 'layers') -> unrolled 'layer_i' subtrees."""
  params = {k: v for k, v in scanned.items() if k != 'layers'}
  for i in range(num_layers):
    params[f'layer_{i}'] = jax.tree.map(lambda x, i=i: x[i], scanned['layers'])
  return params


@pytest.mark.parametrize('family', ['gpt2', 'bert'])
def test_scan_and_unrolled_layers_agree(family, request):
  if family == 'gpt2':
    tokens = jax.random.randint(jax.random.key(10), (2, SEQ), 0, VOCAB)
    make, model = gpt2_tiny, gpt2.GPT2
  else:
    make, model, tokens = bert_tiny, bert.BERT, bert_tokens(jax.random.key(10), 2, SEQ)
  scanned_module, unrolled_module = model(make(scan_layers=True)), model(make(scan_layers=False))
  scanned = request.getfixturevalue(f'{family}_params')
  unrolled = unroll(scanned, 2)
  fresh = jax.eval_shape(lambda t: nn.unbox(unrolled_module.init(jax.random.key(0), t)['params']),
                         tokens)
  assert jax.tree.map(jnp.shape, fresh) == jax.tree.map(jnp.shape, unrolled)
  np.testing.assert_allclose(jax.jit(unrolled_module.apply)({'params': unrolled}, tokens),
                             jax.jit(scanned_module.apply)({'params': scanned}, tokens), atol=1e-5)


def test_remat_policies_give_identical_loss_and_grads(gpt2_params):
  """Dropout on, so the dropout attention path and rng replay under remat are covered too."""
  tokens = jax.random.randint(jax.random.key(11), (2, SEQ + 1), 0, VOCAB)
  params = gpt2_params
  results = {}
  for remat in ('none', 'full', 'dots'):
    module = gpt2.GPT2(gpt2_tiny(remat=remat, dropout=0.1))

    def loss(p, module=module):
      loss_sum, count = gpt2.per_example_loss(module, p, {'tokens': tokens}, jax.random.key(12),
                                              train=True)
      return loss_sum.sum() / count.sum()

    results[remat] = jax.jit(jax.value_and_grad(loss))(params)
  for remat in ('full', 'dots'):
    np.testing.assert_allclose(results[remat][0], results['none'][0], rtol=1e-6)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
                 results[remat][1], results['none'][1])


def test_bfloat16_compute_keeps_float32_params_and_logits(gpt2_params):
  module = gpt2.GPT2(gpt2_tiny(dtype='bfloat16'))
  tokens = jnp.zeros((2, SEQ), jnp.int32)
  params = jax.eval_shape(lambda t: module.init(jax.random.key(0), t)['params'], tokens)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  logits = jax.jit(module.apply)({'params': gpt2_params}, tokens)
  assert logits.dtype == jnp.float32 and np.isfinite(logits).all()


def load_rules() -> tuple:
  path = pathlib.Path(__file__).parents[1] / 'configs' / 'tiny.py'
  spec = importlib.util.spec_from_file_location('tiny_config', path)
  config = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config)
  return tuple(config.get_config().mesh.rules)


@pytest.mark.parametrize('family', ['gpt2', 'bert'])
@pytest.mark.parametrize('scan', [True, False])
def test_params_have_allowed_logical_names_and_shard(family, scan):
  if family == 'gpt2':
    module, tokens = gpt2.GPT2(gpt2_tiny(scan_layers=scan)), jnp.zeros((4, SEQ), jnp.int32)
  else:
    module, tokens = bert.BERT(bert_tiny(scan_layers=scan)), bert_tokens(jax.random.key(13), 4, SEQ)
  init = functools.partial(module.init, jax.random.key(0))
  abstract = jax.eval_shape(init, tokens)['params']
  boxes, _ = jax.tree_util.tree_flatten_with_path(
      abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  for path, box in boxes:
    assert isinstance(box, nn.LogicallyPartitioned), path
    assert len(box.names) == box.value.ndim and set(box.names) <= layers.PARAM_AXES, path
    in_stack = path[0].key == 'layers'
    assert (box.names[0] == 'layers') == in_stack and box.names.count('layers') == in_stack, path
  if not scan or family == 'bert':  # one sharded compile keeps the file fast
    return
  # The trainer's path: logical names -> mesh shardings -> sharded init and a forward pass.
  rules = load_rules()
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ('data', 'fsdp', 'tensor'))
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    params = jax.jit(lambda t: nn.unbox(init(t)['params']), out_shardings=shardings)(tokens)
    logits = jax.jit(lambda p, t: module.apply({'params': p}, t))(params, tokens)
  assert params['wte']['embedding'].sharding.spec == jax.sharding.PartitionSpec('tensor', 'fsdp')
  assert logits.shape == (4, SEQ, VOCAB)


def test_flops_per_token_by_hand():
  # L=2, d=128, d_ff=512, V=1000, T=64.
  # matmul weights: 2 * (4 * 128^2 + 2 * 128 * 512) + 1000 * 128 = 393,216 + 128,000 = 521,216
  # 6 * 521,216 + 12 * 2 * 64 * 128 = 3,127,296 + 196,608
  cfg = gpt2.config_for('tiny', vocab_size=1000)
  assert gpt2.flops_per_token(cfg, 64) == 3_323_904
  # BERT adds the MLM transform (d^2) to the head: 6 * (521,216 + 16,384) + 196,608.
  bcfg = bert.config_for('tiny', vocab_size=1000, num_heads=4)
  assert bert.flops_per_token(bcfg, 64) == 3_422_208
  assert bert.flops_per_token(bert.config_for('tiny', vocab_size=1000, mlm_head=False), 64) == (
      6 * 393_216 + 196_608)


def test_config_errors_name_the_fix():
  with pytest.raises(ValueError, match='tiny, small, medium, large, xl'):
    gpt2.config_for('huge')
  with pytest.raises(ValueError, match='tiny, base, large'):
    bert.config_for('small')
  with pytest.raises(ValueError, match='num_heads'):
    gpt2.config_for('tiny', num_heads=3)
  with pytest.raises(ValueError, match='remat'):
    bert.config_for('tiny', remat='some')
