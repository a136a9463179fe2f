"""herdless engine: settings, namespaces, key rules, Lua scripts, XFetch, leases and metrics."""
