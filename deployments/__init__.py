"""How metalflow runs: the CLI, served deployments and work-pool definitions."""
