"""metalflow flows."""
