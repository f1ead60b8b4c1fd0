"""Incidents: findings -> incidents (`manager`), status changes (`lifecycle`), links between
incidents (`causes`, `attribution`) and pruning (`retention`). The incident JSON itself is
storage's read model (storage/contract.py), shared by the API, the CLI and notifications."""
