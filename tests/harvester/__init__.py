"""Test double for the SUSE Harvester API (Kubernetes REST + Harvester's image upload action).

See ``tests/harvester/double.py`` for usage; the CRDs it validates against are in ``tests/harvester/crds``.
"""

from .double import HarvesterDouble

__all__ = ["HarvesterDouble"]
