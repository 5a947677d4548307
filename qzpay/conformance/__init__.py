"""The storage conformance suite: the properties of DESIGN §5 that every storage adapter must honor."""
