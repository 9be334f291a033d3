"""The run folder: its files, their names and fields, written crash-safe and read back by every command."""
