"""Stage 6: base vs tuned student per language, with lm-evaluation-harness."""
