"""Security layers of the service (spec §3): tokens' policy, keys' protection, the dead man's switch."""
