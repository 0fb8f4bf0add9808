"""The kinds of event source behind :mod:`recsys.io.source`: files and PostgreSQL."""
