"""Accuracy shifts: delayed-label joins, windowed performance, budgeted sequential tests,
and label-free (CBPE-style, DLE-style) estimates.

Labels are joined to predictions by id (`join`). The first `reference_size` labelled events
fix the reference level. After that, every joined pair feeds a one-sided CUSUM on blocks of
`block_size` labelled events whose statistic is N(0,1) while nothing has changed, so its
threshold comes from the false-alarm budget (`blocks`):

- classifiers: the block error rate, through Anscombe's arcsine transform (`classification`);
- regressors: block means of the reference-normal scores of |error| (MAE/RMSE up) and of
  the signed error (bias, both ways), as the numeric drift detector does for features
  (`regression`).

The CUSUM's reference value k is the practical margin itself (it is designed for a drop of
twice the margin): drops smaller than the margin drift the statistic down, so neither they
nor the reference's own sampling error raise alarms, while larger drops are found fast. An
alarm becomes a finding only if the drop measured since the estimated change point clears
the margin; severity grows with that drop.

Where predictions carry class scores, each prediction's confidence is mapped to an expected
correctness through a calibration curve fitted on the reference (binned, as NannyML's CBPE
does), so accuracy is estimated for every prediction at once, before any label comes. A
second CUSUM on blocks of expected errors raises `accuracy_drop` on the subject
`estimated_accuracy`, with `"estimated": true`.

For regressors the same is done by direct loss estimation (`detectors.accuracy.estimate`, as
NannyML's DLE): a small model of |error| given the inputs and the prediction, fitted on the
reference pairs, estimates every prediction's error at once; CUSUMs on blocks of estimated
errors raise `estimated_mae` (up, warning) and `estimated_mae_improved` (down, info).

Per model version and event-time window (by prediction time) the detector keeps running
sums (`windows`) and hands the metric values, with their intervals (`intervals`), to the
pipeline through `metrics()`; late labels update their window again.
"""

from detectors.accuracy.detector import AccuracyDetector

__all__ = ["AccuracyDetector"]
