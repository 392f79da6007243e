"""Node agents: registry and liveness, desired host state, and the Connect stream."""
