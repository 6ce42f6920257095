"""SPMD partitioning (gshard.partition is the function; this is its machinery): an interpreter over the program, run inside jax.shard_map."""
