"""Provisioning steps shared by the builders: packages, files, services, sealing."""
