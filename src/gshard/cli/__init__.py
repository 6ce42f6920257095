"""The `gshard` command line."""
