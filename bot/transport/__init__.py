"""How updates arrive: long polling (one process) or a webhook (any number of replicas)."""
