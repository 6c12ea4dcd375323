"""metalflow tasks."""
