"""DISA STIG support: XCCDF benchmarks, the control catalogue (`stig/*.yaml`) and the offline
fix/check engine that applies baked controls to an image root and verifies them."""
