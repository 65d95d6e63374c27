"""The adapter registry: database models, migrations, object store and query surfaces.

Entry points: `registry.api.Registry` (Python), `registry.cli` (argparse commands) and
`registry.http.create_app` (FastAPI). Configuration comes from `registry.settings`.
"""
