"""HTTP edge of the service: app factory, routes, schemas, auth, errors, CLI."""
