"""One module per kernel interface: a pure parser from text to frozen
dataclasses (format documented above it) plus a reader that takes a Host."""
