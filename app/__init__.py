"""HTTP edge of the service: app factory, routes, schemas, auth, errors, CLI."""

from app.compiled import guard

# Before anything imports the modules that may run compiled (app/compiled.py): a compiled module older
# than its source is never imported.
guard()
