"""The domain core: one module per resource family, each taking Neutron-named
attribute dicts (already decoded from the API) and a caller Context."""
