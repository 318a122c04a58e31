"""A family of synthetic worlds: a loss law with known structure, drawn per seed, that stands in
for training (config.world = a preset of defaults.WORLD_PRESETS; pipeline/world.py plugs it
into the pipeline) and that a study can call directly, many runs at once.

Domain d's validation loss after a run that trained N_j tokens of each domain j:

  L_d = E_d + A_d (1 + e_d / scale)^(-alpha_d),   e = T N   (effective tokens, T_dd = 1)

a power law in effective tokens with cross-domain transfer T. A world is drawn from a spec
(the resolved config.synthetic, defaults.synthetic_spec) by its seed, in a fixed order, so that
changing one field of the spec rescales the same draws (u, v ~ U(-1, 1) per domain):

  E_d = irreducible e^(spread u1),  alpha_d = exponent e^(spread u3),
  T_dj = transfer x U(0, 2) off the diagonal,
  A_d such that the reducible part A_d (1 + e_d / scale)^(-alpha_d) is reducible e^(spread u2)
      at the uniform mixture of `reference` tokens,
  natural shares ~ Dirichlet(concentration).

Seed noise is additive, in nats: a run of N tokens in all, trained with seed s, reads

  L_d + sd_d(N) (sqrt(shared) z_d(s) + sqrt(1 - shared) z_d(s, N_1..N_m)),
  sd_d(N) = noise e^(noise_spread v_d) (N / reference)^noise_exponent,

where z_d(s) is common to every run with seed s (every mixture, every budget: a shared
initialization, so seed-paired comparisons are less noisy than unpaired ones) and z_d(s, N) is
the run's own. Both are standard normals hashed from (world seed, s[, token counts]): a run's
losses depend on nothing else, and many runs evaluate at once (numpy over a leading axis).

A World also gives the clean objective of a mixture at any budget and the true optimal mixture
(World.optimum); effects() and calibration() measure a preset as the runs it was calibrated on
were measured (the presets and their calibration: docs/design.md, "Synthetic worlds").
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from autoscale_jax.errors import ConfigError

OBJECTIVES = ('mean_ppl', 'mean_loss', 'weighted_ppl', 'weighted_loss')
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_TAG_RUN, _TAG_SEED = np.uint64(0x52554E), np.uint64(0x53454544)  # 'RUN', 'SEED'


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer over a uint64 array: a bijection whose outputs look independent
  (the multiplications wrap modulo 2^64, as meant; callers silence numpy's overflow warning)."""
  x = x + _GOLDEN
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def _normals(key: np.ndarray, m: int) -> np.ndarray:
  """m standard normals per hash in `key` (shape (...,)) -> (..., m)."""
  from scipy.special import ndtri
  h = _mix(key[..., None] ^ np.arange(1, m + 1, dtype=np.uint64))
  return ndtri(((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53)


def _uint(values) -> np.ndarray:
  return np.asarray(values, np.int64).astype(np.uint64)


@dataclasses.dataclass(frozen=True, eq=False)
class World:
  """One world: its law (E, A, alpha, T, scale), natural shares, noise and objective.

  Token counts are arrays whose last axis is the domains; any leading axes are runs.
  """
  names: tuple[str, ...]
  E: np.ndarray
  A: np.ndarray
  alpha: np.ndarray
  T: np.ndarray
  scale: float
  natural: np.ndarray  # shares of the world's 'natural' mixture (sum 1)
  noise: np.ndarray  # per domain: seed-to-seed sd of the loss (nats) at `reference` tokens
  reference: float
  noise_exponent: float = 0.0
  shared: float = 0.0
  seed: int = 0
  objective_kind: str = 'mean_ppl'
  objective_weights: np.ndarray | None = None  # per domain, for weighted_*; None = equal

  @property
  def m(self) -> int:
    return len(self.names)

  # -- losses
  def clean(self, tokens) -> np.ndarray:
    """Noise-free losses (..., m) after training `tokens` (..., m) of each domain."""
    tokens = np.asarray(tokens, np.float64)
    return self.E + self.A * (1.0 + tokens @ self.T.T / self.scale)**(-self.alpha)

  def noise_sd(self, total) -> np.ndarray:
    """Per-domain seed-to-seed sd (..., m) of a run of `total` tokens in all (...)."""
    total = np.maximum(np.asarray(total, np.float64), 1.0)[..., None]
    return self.noise * (total / self.reference)**self.noise_exponent

  def seed_noise(self, seeds) -> np.ndarray:
    """The standard normals (..., m) shared by every run with seed `seeds` (...)."""
    with np.errstate(over='ignore'):
      key = _mix(_mix(_uint(self.seed) ^ _TAG_SEED) ^ _uint(seeds))
      return _normals(key, self.m)

  def run_noise(self, tokens, seeds) -> np.ndarray:
    """The standard normals (..., m) of the runs of `tokens` (..., m) with `seeds` (...) alone."""
    counts = _uint(np.round(np.asarray(tokens, np.float64)))
    with np.errstate(over='ignore'):
      key = _mix(_mix(_uint(self.seed) ^ _TAG_RUN) ^ _uint(seeds))
      key = np.broadcast_to(key, counts.shape[:-1])
      for j in range(self.m):
        key = _mix(key ^ counts[..., j])
      return _normals(key, self.m)

  def losses(self, tokens, seeds) -> np.ndarray:
    """Losses (..., m) of runs of `tokens` (..., m) trained with `seeds` (an int or (...))."""
    tokens, seeds = np.asarray(tokens, np.float64), np.asarray(seeds, np.int64)
    shape = np.broadcast_shapes(tokens.shape[:-1], seeds.shape)
    tokens, seeds = np.broadcast_to(tokens, (*shape, self.m)), np.broadcast_to(seeds, shape)
    clean = self.clean(tokens)
    if not np.any(self.noise):
      return clean
    z = (np.sqrt(self.shared) * self.seed_noise(seeds)
         + np.sqrt(1.0 - self.shared) * self.run_noise(tokens, seeds))
    return clean + self.noise_sd(tokens.sum(-1)) * z

  # -- the objective
  def weights_of_objective(self) -> np.ndarray:
    if self.objective_weights is None:
      return np.full(self.m, 1.0 / self.m)
    return np.asarray(self.objective_weights, np.float64)

  def objective(self, losses) -> np.ndarray:
    """The objective (...) of per-domain losses (..., m): mean perplexity by default."""
    losses = np.asarray(losses, np.float64)
    values = np.exp(losses) if self.objective_kind.endswith('ppl') else losses
    return values @ self.weights_of_objective()

  def value(self, weights, budget) -> np.ndarray:
    """The clean objective (...) of mixtures `weights` (..., m) trained for `budget` tokens."""
    weights = np.asarray(weights, np.float64)
    return self.objective(self.clean(weights * np.asarray(budget, np.float64)[..., None]))

  def _value_and_grad(self, weights: np.ndarray, budget: float) -> tuple[float, np.ndarray]:
    """The clean objective of one mixture at `budget` and its gradient in the weights."""
    base = 1.0 + self.T @ (weights * budget) / self.scale
    loss = self.E + self.A * base**(-self.alpha)
    slope = -self.alpha * self.A * base**(-self.alpha - 1.0) / self.scale  # dL_d / de_d
    c = self.weights_of_objective()
    if self.objective_kind.endswith('ppl'):
      values = np.exp(loss)
      return float(c @ values), budget * ((c * values * slope) @ self.T)
    return float(c @ loss), budget * ((c * slope) @ self.T)

  def optimum(self, budget: float, mask=None) -> np.ndarray:
    """The true optimal mixture (m,) at `budget` tokens: the clean objective minimised over the
    simplex (over the domains in `mask`, the others at 0). The objective is convex in the
    weights (T >= 0; a power law of an affine map, through exp for perplexities), so SLSQP
    with the exact gradient finds it; it starts from uniform, natural and the best of m
    points leaning to one domain, and keeps the best answer."""
    from scipy.optimize import minimize
    free = np.ones(self.m, bool) if mask is None else np.asarray(mask, bool)
    idx = np.flatnonzero(free)
    k = idx.size
    if k == 0:
      raise ValueError('optimum: the mask leaves no domain to train on.')

    def full(x):
      w = np.zeros(self.m)
      w[idx] = x
      return w
    if k == 1:
      return full(np.ones(1))
    budget = float(budget)
    norm = self._value_and_grad(full(np.full(k, 1.0 / k)), budget)[0]

    def fun(x):
      value, grad = self._value_and_grad(full(x), budget)
      return value / norm, grad[idx] / norm

    leaning = 0.5 * np.eye(k) + 0.5 / k
    natural = self.natural[idx] / self.natural[idx].sum()
    starts = [np.full(k, 1.0 / k), 0.5 * natural + 0.5 / k,
              leaning[np.argmin([fun(x)[0] for x in leaning])]]
    best, best_value = None, np.inf
    for x0 in starts:
      res = minimize(fun, x0, jac=True, method='SLSQP', bounds=[(0.0, 1.0)] * k,
                     constraints=[{'type': 'eq', 'fun': lambda x: x.sum() - 1.0,
                                   'jac': lambda x: np.ones_like(x)}],
                     options={'ftol': 1e-15, 'maxiter': 1000})
      x = np.clip(res.x, 0.0, None)
      x = x / x.sum()
      value = fun(x)[0]
      if value < best_value:
        best, best_value = x, value
    return full(best)


# ------------------------------------------------------------------------------ the family
SPEC_FIELDS = ('scale', 'reference', 'irreducible', 'reducible', 'exponent', 'spread',
               'transfer', 'concentration', 'noise', 'noise_exponent', 'noise_spread', 'shared')


def check_spec(spec: dict) -> None:
  """One sentence naming the config.synthetic field for a value no world can have."""
  rules = {'scale': (0, False), 'reference': (0, False), 'irreducible': (0, True),
           'reducible': (0, False), 'exponent': (0, False), 'spread': (0, True),
           'transfer': (0, True), 'concentration': (0, False), 'noise': (0, True),
           'noise_spread': (0, True), 'shared': (0, True)}
  for field in SPEC_FIELDS:
    value = spec[field]
    if not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
      raise ConfigError(f'config.synthetic.{field} must be a finite number; got {value!r}.')
    if field in rules:
      low, closed = rules[field]
      if value < low or (value == low and not closed):
        raise ConfigError(f'config.synthetic.{field} must be {">=" if closed else ">"} {low}; '
                          f'got {value}.')
  if spec['shared'] > 1:
    raise ConfigError(f"config.synthetic.shared is a fraction of the noise variance, in [0, 1]; "
                      f"got {spec['shared']}.")
  if not isinstance(spec['seed'], (int, np.integer)) or spec['seed'] < 0:
    raise ConfigError(f"config.synthetic.seed must be an integer >= 0; got {spec['seed']!r}.")


def make(spec: dict, names: Sequence[str] | int, *, objective: str = 'mean_ppl',
         objective_weights: np.ndarray | None = None) -> World:
  """The world of `spec` (SPEC_FIELDS and seed) over `names` (or that many domains d0, d1...)."""
  check_spec(spec)
  if objective not in OBJECTIVES:
    raise ConfigError(f"a world's objective is one of {', '.join(OBJECTIVES)}; got {objective!r}.")
  if isinstance(names, (int, np.integer)):
    names = tuple(f'd{i}' for i in range(names))
  names = tuple(names)
  m = len(names)
  if m < 1:
    raise ConfigError('a synthetic world needs at least one domain.')
  rng = np.random.default_rng([0x574F524C44, spec['seed'], m])  # 'WORLD'
  u = rng.uniform(-1.0, 1.0, (4, m))
  transfer = spec['transfer'] * rng.uniform(0.0, 2.0, (m, m))
  np.fill_diagonal(transfer, 1.0)
  shares = rng.standard_gamma(spec['concentration'], m) + 1e-300
  spread = spec['spread']
  alpha = spec['exponent'] * np.exp(spread * u[2])
  reducible = spec['reducible'] * np.exp(spread * u[1])
  at_reference = 1.0 + transfer.sum(1) * spec['reference'] / m / spec['scale']
  return World(
      names=names, E=spec['irreducible'] * np.exp(spread * u[0]),
      A=reducible * at_reference**alpha, alpha=alpha, T=transfer, scale=float(spec['scale']),
      natural=shares / shares.sum(), noise=spec['noise'] * np.exp(spec['noise_spread'] * u[3]),
      reference=float(spec['reference']), noise_exponent=float(spec['noise_exponent']),
      shared=float(spec['shared']), seed=int(spec['seed']), objective_kind=objective,
      objective_weights=objective_weights)


def preset(name: str, num_domains: int, seed: int = 0, **fields) -> World:
  """A world of the preset `name` (defaults.WORLD_PRESETS) over `num_domains` domains, its
  `seed`-th, with `fields` (config.synthetic's) in place of the preset's; mean perplexity."""
  from autoscale_jax import defaults
  if name not in defaults.WORLD_PRESETS:
    raise ConfigError(f"no world preset '{name}'; the presets are "
                      f"{', '.join(defaults.WORLD_PRESETS)}.")
  unknown = sorted(set(fields) - set(SPEC_FIELDS))
  if unknown:
    raise ConfigError(f'{unknown} are not fields of config.synthetic ({", ".join(SPEC_FIELDS)}).')
  return make({**defaults.WORLD_PRESETS[name], **fields, 'seed': seed}, num_domains)


# ------------------------------------------------------------------------------ calibration
def effects(world: World, budget: float, factor: float = 3.0, seeds: int = 400) -> dict:
  """What a DDO plan point does in `world` at `budget`, in the scale study's terms
  (bench/RESULTS.md, "Pilot"): from the uniform base run, each domain's quantity times `factor`.

  Per domain (arrays over the m perturbed domains): loss_sd (its seed sd in the base run),
  own (the change of its own clean loss, nats), ratio (clean objective over the base's), steps
  (what the extra tokens alone give: uniform at the perturbed run's budget, over the base),
  effect = ratio - steps, ratio_sd (sd of the seed-paired ratio over `seeds` seeds) and
  z = effect / ratio_sd.
  """
  m = world.m
  base = np.full(m, budget / m)
  runs = base * (1.0 + (factor - 1.0) * np.eye(m))
  clean_base = world.clean(base)
  j_base = world.objective(clean_base)
  ratio = world.objective(world.clean(runs)) / j_base
  steps = world.value(np.full(m, 1.0 / m), runs.sum(1)) / j_base
  s = np.arange(seeds)
  paired = (world.objective(world.losses(runs[None], s[:, None]))
            / world.objective(world.losses(base, s))[:, None])
  ratio_sd = paired.std(0, ddof=1) if np.any(world.noise) else np.zeros(m)
  loss_sd, own = world.noise_sd(budget), np.diag(world.clean(runs)) - clean_base
  with np.errstate(divide='ignore', invalid='ignore'):
    return {'budget': budget, 'factor': factor, 'loss': clean_base, 'loss_sd': loss_sd,
            'own': own, 'own_z': np.abs(own) / loss_sd, 'ratio': ratio, 'steps': steps,
            'effect': ratio - steps, 'ratio_sd': ratio_sd, 'z': (ratio - steps) / ratio_sd}


def calibration(name: str, budgets: Sequence[float], factor: float = 3.0, *,
                num_domains: int = 4, worlds: int = 10, seeds: int = 200) -> dict:
  """effects() over the first `worlds` worlds of preset `name` at each budget: the 10%, 50% and
  90% quantiles over worlds and domains of each measure (docs/design.md compares them with the
  scale study's pilot and the AutoScale paper; main() prints them)."""
  keys = ['loss', 'loss_sd', 'own', 'ratio']
  if preset(name, num_domains).noise.any():
    keys += ['own_z', 'ratio_sd', 'z']  # in units of the noise, where there is any
  out = {}
  for budget in budgets:
    runs = [effects(preset(name, num_domains, s), budget, factor, seeds) for s in range(worlds)]
    out[budget] = {k: np.percentile(np.concatenate([r[k] for r in runs]), [10, 50, 90])
                   for k in keys}
  return out


def main() -> None:
  """Prints the calibration of each preset at the budgets docs/design.md names:
  python -c 'from autoscale_jax.pipeline import worlds; worlds.main()'"""
  settings = {'cpu': ((50e3, 200e3, 800e3, 3.2e6), 3.0, 4),
              'paper': ((0.3e9, 1.2e9, 10e9), 0.2, 7), 'noiseless': ((1.2e9,), 0.2, 7)}
  for name, (budgets, factor, m) in settings.items():
    print(f'{name}: {m} domains, each x{factor:g} from uniform; quantiles 10/50/90% over 10 '
          'worlds and their domains')
    for budget, row in calibration(name, budgets, factor, num_domains=m).items():
      print(f'  {budget:>14,.0f}  ' + '  '.join(
          f"{k} {'/'.join(f'{v:.3g}' for v in q)}" for k, q in row.items()))
