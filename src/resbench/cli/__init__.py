"""The command line: one module per command, each a parser, a handler and its text output."""
