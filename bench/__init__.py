"""metalflow bench."""
