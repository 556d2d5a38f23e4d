"""resilient: resilience middleware for Python services."""
