"""The wire protocol: pure data types, encoding and validation, no I/O."""

PROTOCOL_VERSION = 1
