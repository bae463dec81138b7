"""The engine layer: endpoint discovery and a docker-py based client (no Qt)."""
