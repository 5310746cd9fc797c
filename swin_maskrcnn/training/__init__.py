"""Training: the config schema, the Lightning module, optimiser and schedule, monitoring, the train loop."""
