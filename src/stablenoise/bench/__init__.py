"""The bench: run methods over prompt sets into a SQLite results store, and report on it."""
