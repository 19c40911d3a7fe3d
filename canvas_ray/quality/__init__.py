"""Output quality.

- In generation (run by the Inpaint stage): :mod:`.guard` (k candidates, object-expansion retries),
  :mod:`.expansion` (the metric) and :mod:`.scoring` (weight-free scores, CLIP alignment).
- After a run: :mod:`.evaluation` (metrics, reference-set FID/KID, plots, HTML, the job), whose entry
  points :mod:`.evaluate` re-exports.
"""
