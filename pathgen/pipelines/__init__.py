"""Staged jobs (patch, embed, train, synthesize, evaluate, demo), each behind a subcommand."""
