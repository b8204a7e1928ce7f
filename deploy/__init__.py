"""Putting a station on a Jetson or an industrial PC: preflight checks (`sclvi check`); see deploy/README.md."""
