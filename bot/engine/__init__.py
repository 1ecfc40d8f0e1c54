"""Generation engines behind one interface (base); `factory.get_engine()` builds the configured one."""
