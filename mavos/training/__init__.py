"""Lightning training: the LightningModule that unrolls clips through ``ObjectTracker``, losses, schedules."""
