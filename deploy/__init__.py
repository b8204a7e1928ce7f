"""Deployment helpers for Jetson and industrial PCs (built with the engines and edge issues)."""
