"""The Prefect flows, deployments and the `hydracat` command.

Importing the package sets the project's Prefect defaults (`flows.prefect_setup.DEFAULTS`: start-up
timeout, no telemetry) for whatever the user has not set, before Prefect reads its settings."""

from flows.prefect_setup import apply_defaults

apply_defaults()
