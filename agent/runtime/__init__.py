"""The agent's runtime: the per-batch pipeline, the per-model monitors and their checkpoints,
the daemon, replay, and the jobs beside the hot path (background, scheduler)."""
