"""The spam milter: scores a message from many checks and acts by threshold."""
