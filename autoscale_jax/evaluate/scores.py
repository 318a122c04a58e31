"""The metrics of the fine-tuning tasks, in numpy on the host's predictions: accuracy; macro_f1,
the mean of the per-label F1 over the labels that occur in the dev labels or the predictions
(scikit-learn's default, without depending on it); f1, binary F1 of label 1; mcc, Matthews
correlation (multi-class form; 0 when undefined).
"""

import math

import numpy as np

# The metrics reported beside accuracy, by main metric.
SECOND_METRIC = {'accuracy': 'macro_f1', 'mcc': 'mcc', 'f1': 'f1'}


def _labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
  y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
  if y_true.shape != y_pred.shape or not y_true.size:
    raise ValueError(f'Need as many predictions as labels, at least one; got {y_true.size} '
                     f'labels and {y_pred.size} predictions.')
  return y_true, y_pred


def accuracy(y_true, y_pred) -> float:
  """The fraction of predictions equal to the label."""
  y_true, y_pred = _labels(y_true, y_pred)
  return float(np.mean(y_true == y_pred))


def _f1(tp: float, fp: float, fn: float) -> float:
  """2 tp / (2 tp + fp + fn): the harmonic mean of precision and recall; 0 when undefined."""
  return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def binary_f1(y_true, y_pred, positive: int = 1) -> float:
  """F1 of the class `positive` (GLUE's F1 for mrpc and qqp: label 1, 'equivalent')."""
  y_true, y_pred = _labels(y_true, y_pred)
  t, p = y_true == positive, y_pred == positive
  return _f1(float(np.sum(t & p)), float(np.sum(~t & p)), float(np.sum(t & ~p)))


def macro_f1(y_true, y_pred) -> float:
  """The unweighted mean of the per-label F1 over the labels in y_true or y_pred."""
  y_true, y_pred = _labels(y_true, y_pred)
  return float(np.mean([binary_f1(y_true, y_pred, c) for c in np.union1d(y_true, y_pred)]))


def matthews_corrcoef(y_true, y_pred) -> float:
  """Matthews correlation (GLUE's metric for cola), in its multi-class form over the confusion
  matrix C: (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2)), with s the
  examples, c the correct ones, t_k and p_k the true and predicted counts of label k; for two
  labels (tp tn - fp fn) / sqrt((tp + fp)(tp + fn)(tn + fp)(tn + fn)). 0 when undefined (all
  labels or all predictions one class)."""
  y_true, y_pred = _labels(y_true, y_pred)
  classes = np.union1d(y_true, y_pred)
  t = np.array([np.sum(y_true == c) for c in classes], np.float64)
  p = np.array([np.sum(y_pred == c) for c in classes], np.float64)
  s, c = float(y_true.size), float(np.sum(y_true == y_pred))
  denominator = math.sqrt((s * s - p @ p) * (s * s - t @ t))
  return float((c * s - p @ t) / denominator) if denominator else 0.0


METRICS = {'accuracy': accuracy, 'macro_f1': macro_f1, 'f1': binary_f1,
           'mcc': matthews_corrcoef}
