"""In-tree method plugins, one module each (registered through the bench.methods entry points)."""
