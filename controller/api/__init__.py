"""The gRPC edge: protobuf <-> domain translation, auth and error mapping."""
