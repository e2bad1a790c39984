"""I/O behind ``core``'s protocols: object stores, the state database, encoders."""
