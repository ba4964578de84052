"""Redis: the only state shared between processes and hosts."""
