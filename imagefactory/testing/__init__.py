"""Boot tests: libvirt harness and the testinfra suites run against booted images."""
