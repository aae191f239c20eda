"""Cluster tooling: a local multi-node Ray cluster for development and tests.

Configs for real clusters (Ray cluster launcher, KubeRay, Serve config) live in
the top-level `cluster/` folder of the repository.
"""
