"""Builders turn a recipe into a sealed root and a bootable disk."""
