"""Fidelity to full attention, measured while serving: a sampled fused request is also run with full
attention (a shadow, in the step loop's spare capacity) and compared; the figures are aggregated per
configuration with confidence intervals (report.py) and kept in the cache directory."""
