"""Stage 5: full fine-tuning of the student (Ray Train + DeepSpeed ZeRO-3)."""
