"""The ground floor: helpers every app stands on (database, caches, env, client address,
the config-file framework, API helpers). Nothing here imports an app or the rest of gateway_site."""
