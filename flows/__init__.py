"""Prefect flows of the experiment pipeline; each task calls one library entry point."""
