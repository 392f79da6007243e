"""ML2-style type drivers: one per network type, loaded from the `baryon.type_drivers`
entry points and enabled by `ml2.type_drivers` in the controller config."""
