"""A replica's ranks as Ray actors: placement, process groups, shard loading, the executor."""
