"""pollcat: deliver ICAT/TopCAT downloads to users' targets.

The core is plain Python (no Prefect imports); `pollcat.flows`, `tasks`, `blocks` and
`deployments` wrap it. `lint-imports` checks this (`[tool.importlinter]` in pyproject.toml).
"""

__version__ = "0.1.0"
