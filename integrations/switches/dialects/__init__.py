"""One module per switch OS: each a small Dialect subclass (see ``integrations.switches.dialect``)."""
