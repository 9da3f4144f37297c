"""Dataset readers, training-clip sampling and LightningDataModules (independent of the model)."""
