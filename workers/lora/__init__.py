"""LoRA adapters served on one base model: PEFT files, the device/host/disk tiers, the
per-step slot table, and the batched deltas the model adds behind one small hook."""
