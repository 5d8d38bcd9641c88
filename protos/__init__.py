"""Generated protobuf and gRPC modules (built from the .proto files here; never hand-edited)."""
