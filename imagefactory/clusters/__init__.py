"""RKE2 clusters from catalogue images: the spec, and the Harvester and libvirt targets."""
