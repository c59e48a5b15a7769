"""Sans-I/O protocol parsers: feed bytes, get typed records."""
