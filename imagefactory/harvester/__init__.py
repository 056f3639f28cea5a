"""Harvester: image upload (images.py) over the Kubernetes API client (api.py)."""
