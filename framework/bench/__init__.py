"""`repro bench`: framework/bench/cases.py times a run's training step against a plain loop; framework/bench/fused.py
times fused groups."""
