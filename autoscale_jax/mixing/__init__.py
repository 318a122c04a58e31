"""Mixing math: per-domain power-law fits, the DDO solve, and AutoScale extrapolation.

Pure math over arrays (numpy in and out, float64 jax inside, scoped so training keeps its
default dtypes); it knows nothing of training or data.
"""

from autoscale_jax.mixing.autoscale import (
  PINNED_MODES,
  AutoScaleModel,
  PathTest,
  WeightInterval,
  cap_to_data,
)
from autoscale_jax.mixing.conservative import (
  RatioInterval,
  Shrinkage,
  blend,
  extrapolated_domains,
  improvement_draws,
  path_fractions,
  predicted_ratio,
  ratio_intervals,
  refit_laws,
  shrink,
)
from autoscale_jax.mixing.ddo import (
                                      DDOProblem,
                                      Perturbation,
                                      ddo_weights,
                                      fit_domains,
                                      perturbation_plan,
                                      pinned_domains,
                                      solve_ddo,
)
from autoscale_jax.mixing.heuristics import doremi_update, temperature_weights, unimax_weights
from autoscale_jax.mixing.mixing_law import MixingLaw
from autoscale_jax.mixing.powerlaw import (
                                      DegenerateFitWarning,
                                      PowerLaw,
                                      bootstrap_fits,
                                      fit_power_law,
)
from autoscale_jax.mixing.regmix import RegMixRegressor, regmix_search

__all__ = [
    'PINNED_MODES', 'AutoScaleModel', 'DDOProblem', 'DegenerateFitWarning', 'PathTest',
    'Perturbation', 'PowerLaw', 'WeightInterval', 'bootstrap_fits', 'cap_to_data', 'ddo_weights',
    'fit_domains', 'fit_power_law', 'perturbation_plan', 'pinned_domains', 'solve_ddo',
    'RatioInterval', 'Shrinkage', 'blend', 'extrapolated_domains', 'improvement_draws',
    'path_fractions', 'predicted_ratio', 'ratio_intervals', 'refit_laws', 'shrink',
    'MixingLaw', 'RegMixRegressor', 'doremi_update', 'regmix_search', 'temperature_weights',
    'unimax_weights',
]
