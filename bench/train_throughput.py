"""Train-step throughput on CPU: our jitted GPT-2/BERT step vs Hugging Face + torch.optim.AdamW.

Both sides do the same work per step: forward, backward, global-norm clip at 1.0 and AdamW
(decay on matrices only) for the same dims, batch, sequence length and dtype (float32), with
dropout 0 and the output layer tied to the token embedding. Our side is
autoscale_jax.train.trainer.Trainer on one CPU device with configs/tiny.py plus the dims below;
the reference is transformers' GPT2LMHeadModel / BertForMaskedLM (its default attention, SDPA)
with torch.optim.AdamW (fused where available) and torch threads = CPU count. Repetitions of
the two (and of a large float32 matmul that measures this machine's peak, in jax and in torch)
are interleaved in one process, so ratios share the machine's load; figures are medians.

Also times the step's GEMMs alone (the same matmul shapes as forward + backward, as one jitted
chain): the floor a step could reach with XLA's matmuls and nothing else.

  python bench/train_throughput.py                  # all sizes, writes RESULTS.md
  python bench/train_throughput.py --sizes tiny --reps 3 --no-write
"""

import argparse
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from autoscale_jax.configs import tiny  # noqa: E402
from autoscale_jax.models import build_model  # noqa: E402
from autoscale_jax.train import mesh as mesh_lib  # noqa: E402
from autoscale_jax.train.trainer import Trainer, run_key  # noqa: E402

HEADING = '## Train step throughput (CPU, fp32)'


@dataclasses.dataclass(frozen=True)
class Size:
  name: str
  layers: int
  d_model: int
  heads: int
  vocab: int
  seq: int
  batch: int

  @property
  def d_ff(self) -> int:
    return 4 * self.d_model


SIZES = {
    'gpt2': {
        'tiny': Size('tiny', 2, 128, 4, 8192, 128, 8),
        'mid': Size('d256/4L', 4, 256, 4, 8192, 128, 8),
        'small': Size('small (124M)', 12, 768, 12, 50304, 128, 4),
    },
    'bert': {
        'tiny': Size('tiny', 2, 128, 2, 8192, 128, 8),
        'mid': Size('d256/4L', 4, 256, 4, 8192, 128, 8),
        'small': Size('base (110M)', 12, 768, 12, 30592, 128, 4),
    },
}
LARGER = ('mid', 'small')  # the goals apply to these


# ------------------------------------------------------------------------------ ours (jax)
# Variants of our model config (the first is what configs/tiny.py gives).
VARIANTS = {
    'ours': {},
    'unroll': {'scan_unroll': 0},  # scanned params, loop fully unrolled (config.model.scan_unroll)
    'python': {'scan_layers': False},  # one module per layer
}


def ours(family: str, s: Size, variant: str = 'ours'):
  """(step function that blocks, flops per token) for our Trainer on one CPU device."""
  c = tiny.get_config()
  c.model.family = family
  c.model.size = 'tiny'
  c.model.dropout = 0.0
  fields = dict(num_layers=s.layers, d_model=s.d_model, num_heads=s.heads, d_ff=s.d_ff,
                max_len=max(512, s.seq))
  extra = dict(VARIANTS[variant])
  c.model.scan_layers = extra.pop('scan_layers', c.model.scan_layers)
  c.model.overrides = ml_collections.ConfigDict({**fields, **extra})
  c.train.batch_size = s.batch
  c.mesh.data = 1
  model = build_model(c.model, vocab_size=s.vocab, seq_len=s.seq)
  assert model.config.vocab_size == s.vocab, 'use vocab sizes that are multiples of 128'
  trainer = Trainer(model=model, train_cfg=c.train,
                    mesh=mesh_lib.make_mesh(c.mesh, jax.devices()[:1]), rules=c.mesh.rules,
                    num_domains=1)
  rng = np.random.default_rng(0)
  tokens = rng.integers(104, s.vocab, (s.batch, model.row_len)).astype(np.int32)
  if family == 'bert':
    tokens[:, 0], tokens[:, -1] = 101, 102
  batch = trainer.put_batch({'tokens': tokens, 'domain': np.zeros(s.batch, np.int32)})
  holder = {'state': trainer.init_state(run_key(0))}

  def step():
    holder['state'], metrics = trainer.step(holder['state'], batch, run_key(0), 10_000)
    jax.block_until_ready(metrics['loss'])
  step()  # compile
  return step, model.flops_per_token


# ------------------------------------------------------------------------------ reference (torch)
def reference(family: str, s: Size):
  """Step function (blocks) of the HF model + torch.optim.AdamW with the same work as ours."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  if family == 'gpt2':
    cfg = transformers.GPT2Config(
        vocab_size=s.vocab, n_positions=512, n_embd=s.d_model, n_layer=s.layers, n_head=s.heads,
        n_inner=s.d_ff, activation_function='gelu_new', resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, layer_norm_epsilon=1e-5, tie_word_embeddings=True)
    model = transformers.GPT2LMHeadModel(cfg)
    embeddings = ('wte', 'wpe')
  else:
    cfg = transformers.BertConfig(
        vocab_size=s.vocab, hidden_size=s.d_model, num_hidden_layers=s.layers,
        num_attention_heads=s.heads, intermediate_size=s.d_ff, hidden_act='gelu',
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=512,
        type_vocab_size=2, layer_norm_eps=1e-12, tie_word_embeddings=True)
    model = transformers.BertForMaskedLM(cfg)
    embeddings = ('word_embeddings', 'position_embeddings', 'token_type_embeddings')
  model.train()
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    is_matrix = p.ndim >= 2 and not any(e in name for e in embeddings)
    (decay if is_matrix else no_decay).append(p)
  groups = [{'params': decay, 'weight_decay': 0.1}, {'params': no_decay, 'weight_decay': 0.0}]
  try:
    opt = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
  except (RuntimeError, TypeError):
    opt = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
  gen = torch.Generator().manual_seed(0)
  tokens = torch.randint(104, s.vocab, (s.batch, s.seq + (family == 'gpt2')), generator=gen)
  params = list(model.parameters())
  if family == 'gpt2':
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    extra = {}
  else:
    tokens[:, 0], tokens[:, -1] = 101, 102
    chosen = torch.rand(tokens.shape, generator=gen) < 0.15
    inputs = torch.where(chosen, torch.full_like(tokens, 103), tokens)
    targets = torch.where(chosen, tokens, torch.full_like(tokens, -100))
    extra = {'attention_mask': torch.ones_like(tokens)}

  def step():
    logits = model(input_ids=inputs, **extra).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, s.vocab), targets.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss.item()
  step()
  return step


# ------------------------------------------------------------------------------ peaks and floors
def jax_matmul(n: int):
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()
  return lambda: f(a, b).block_until_ready()


def torch_matmul(n: int):
  import torch  # pylint: disable=import-outside-toplevel
  a, b = torch.randn(n, n), torch.randn(n, n)
  out = torch.empty(n, n)
  return lambda: torch.matmul(a, b, out=out)


def step_gemms(family: str, s: Size) -> list[tuple[int, int, int, int]]:
  """(batch, M, K, N) of every matmul of one training step: forward, and 2 per matmul backward."""
  bt, d, f, h = s.batch * s.seq, s.d_model, s.d_ff, s.heads
  hd = d // h
  fwd = [(1, bt, d, d)] * 4 + [(1, bt, d, f), (1, bt, f, d)]  # q, k, v, out, fc, proj
  fwd += [(s.batch * h, s.seq, hd, s.seq), (s.batch * h, s.seq, s.seq, hd)]  # scores, values
  fwd = fwd * s.layers
  if family == 'bert':
    fwd.append((1, bt, d, d))  # MLM transform
  fwd.append((1, bt, d, s.vocab))  # tied output layer
  out = []
  for g, m, k, n in fwd:  # y = x w: dx = dy w^T (m, n, k), dw = x^T dy (k, m, n)
    out += [(g, m, k, n), (g, m, n, k), (g, k, m, n)]
  return out


def gemm_chain(gemms):
  """One jitted program running exactly these matmuls (the step's floor with XLA's GEMMs)."""
  keys = iter(jax.random.split(jax.random.key(0), 2 * len(gemms)))
  operands = [(jax.random.normal(next(keys), (g, m, k)), jax.random.normal(next(keys), (g, k, n)))
              for g, m, k, n in gemms]

  @jax.jit
  def run(ops):
    total = jnp.float32(0)
    for a, b in ops:
      total += jnp.matmul(a, b)[0, 0, 0]  # keeps every product alive at no real cost
    return total
  run(operands).block_until_ready()
  return lambda: run(operands).block_until_ready()


# ------------------------------------------------------------------------------ main
LIMITS = """\
What limits it: the matmuls. "GEMMs only" is one jitted program running exactly the step's
matmuls (same shapes, forward and both backward products) and nothing else: no step built on
XLA's CPU matmuls can beat it, and it is what bounds ours/torch on the larger sizes, where
torch's matmuls (MKL/oneDNN sgemm; compare the two peaks above) are faster than XLA's. What is
ours over the GEMMs (profiled with jax.profiler, per-op thread time): the vocab-wide softmax
and its gradient plus the transposed copy of the logits' gradient that XLA makes for the
embedding-gradient matmul; the transposed copies feeding the other weight-gradient matmuls;
tanh-GELU; and, with the default rolled layer loop (scan_unroll=1), zero-filled residual
buffers and their dynamic slices/updates, which config.model.scan_unroll=0 removes (same
params, every layer compiled). Every step also page-faults its fresh temp buffer (one mmap per
execution in the XLA CPU runtime: 15-20% of the step's CPU time is system time at d256/4L).
Torch loses on the tiny sizes to its per-op eager dispatch; under heavy machine load its OpenMP
threads lose far more than XLA's pool, so ratios measured at a high load average favour ours."""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--families', default='gpt2,bert')
  parser.add_argument('--sizes', default='tiny,mid,small')
  parser.add_argument('--reps', type=int, default=5, help='interleaved repetitions')
  parser.add_argument('--seconds', type=float, default=2.0, help='target seconds per repetition')
  parser.add_argument('--matmul', type=int, default=4096, help='n of the n x n x n peak matmul')
  parser.add_argument('--variants', default='unroll',
                      help=f'extra configs of ours to time, from {list(VARIANTS)[1:]}')
  parser.add_argument('--no-torch', action='store_true', help='skip the PyTorch reference')
  parser.add_argument('--no-write', action='store_true', help='do not touch RESULTS.md')
  args = parser.parse_args()
  variants = [v for v in args.variants.split(',') if v]

  torch_threads = ''
  if not args.no_torch:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(os.cpu_count())
    torch_threads = (f'torch {torch.__version__} ({torch.get_num_threads()} threads), '
                     f'transformers {transformers.__version__}')
  print(f'# {_common.machine(torch_threads)}; load {_common.load()}', flush=True)

  rows = []
  for family in args.families.split(','):
    for key in args.sizes.split(','):
      s = SIZES[family][key]
      fns = {}
      fns['ours'], fpt = ours(family, s)
      for v in variants:
        fns[v], _ = ours(family, s, v)
      if not args.no_torch:
        fns['torch'] = reference(family, s)
      fns['gemms'] = gemm_chain(step_gemms(family, s))
      fns['peak'] = jax_matmul(args.matmul)
      if not args.no_torch:
        fns['peak torch'] = torch_matmul(args.matmul)
      times = _common.interleaved(fns, args.reps, args.seconds)
      med = {k: _common.median(v) for k, v in times.items()}
      tokens = s.batch * s.seq
      peak = 2 * args.matmul**3 / med['peak']
      row = dict(label=f'{family} {s.name} ({s.batch} x {s.seq})', fpt=fpt, peak=peak,
                 tps={k: tokens / med[k] for k in ['ours', *variants, 'gemms', 'torch']
                      if k in med},
                 peak_torch=2 * args.matmul**3 / med['peak torch'] if 'peak torch' in med
                 else float('nan'))
      # Ratios: medians of per-repetition ratios (each repetition shares the machine's load).
      row['vs_torch'] = {k: _common.median([a / b for a, b in zip(times['torch'], times[k])])
                         for k in ['ours', *variants, 'gemms'] if 'torch' in times}
      rows.append(row)
      print(f'{row["label"]}: ' + ', '.join(f'{k} {v:.0f} tok/s' for k, v in row['tps'].items())
            + ', ' + ', '.join(f'{k}/torch {v:.2f}x' for k, v in row['vs_torch'].items())
            + f', MFU {fpt * row["tps"]["ours"] / peak:.1%} of {peak / 1e9:.0f} GFLOP/s '
            f'(torch matmul {row["peak_torch"] / 1e9:.0f}); load {_common.load()}', flush=True)

  names = ['ours', *variants]
  header = (['model (batch x seq)', 'GFLOP/tok']
            + [f'{"ours" if k == "ours" else "ours " + k} tok/s' for k in names]
            + ['torch tok/s'] + [f'{k}/torch' for k in names]
            + [f'MFU {k}' for k in names] + ['GEMMs only tok/s', 'GEMMs only/torch'])
  nan = float('nan')
  lines = [[r['label'], f'{r["fpt"] / 1e9:.3f}']
           + [f'{r["tps"][k]:.0f}' for k in names] + [f'{r["tps"].get("torch", nan):.0f}']
           + [f'{r["vs_torch"].get(k, nan):.2f}x' for k in names]
           + [f'{r["fpt"] * r["tps"][k] / r["peak"]:.1%}' for k in names]
           + [f'{r["tps"]["gemms"]:.0f}', f'{r["vs_torch"].get("gemms", nan):.2f}x']
           for r in rows]
  out = _common.table(header, lines)
  peaks = [r['peak'] for r in rows]
  peak_line = (f'Peak: jax fp32 {args.matmul}^3 matmul {min(peaks) / 1e9:.0f}-'
               f'{max(peaks) / 1e9:.0f} GFLOP/s (median of each model\'s run; MFU uses its own)')
  if not args.no_torch:
    pt = [r['peak_torch'] for r in rows]
    peak_line += f'; torch, same matmul: {min(pt) / 1e9:.0f}-{max(pt) / 1e9:.0f} GFLOP/s'
  print()
  print('\n'.join(out))
  print(peak_line + f'. Load at the end: {_common.load()}.')
  if not args.no_write:
    body = [f'Machine: {_common.machine(torch_threads)}; load (1/5/15 min) at the end '
            f'{_common.load()}.', '', *out, '', peak_line + '.', '',
            'Columns: tokens/s are medians of interleaved repetitions; x/torch are medians of '
            'per-repetition ratios; MFU = FLOPs per token (6 x matmul weights + attention, '
            'layers.matmul_flops_per_token) x tokens/s / the jax matmul peak of the same run; '
            '"ours unroll" is config.model.scan_unroll=0, "ours python" '
            'config.model.scan_layers=False (one module per layer).', '',
            LIMITS.replace('\n', ' ')]
    _common.write_section(HEADING, body)


if __name__ == '__main__':
  main()
