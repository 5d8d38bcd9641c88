"""The Redis side of oss-serve's request path, shared by routers and replicas.

Routers enqueue request records and read the replica registry and prefix-cache events;
replicas (cluster/replica/queue.py) pull, acknowledge and publish through the same
definitions, so the two sides cannot disagree on a field name.
"""
