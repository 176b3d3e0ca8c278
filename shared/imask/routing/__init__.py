"""A/B routing of model variants: sticky assignment, experiments in Redis, the statistics that decide."""
