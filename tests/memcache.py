"""A cache in memory with the reading interface `activations.content_rows` and `KeptRows` use
(shards of `shard_rows` rows, hook "h"): tests plant rows in it without a model or a disk."""


class MemCache:
    def __init__(self, x, pos, shard_rows=500):
        self.x, self.pos, self.n_tokens, self.hooks = x, pos, len(x), ["h"]
        self.manifest = {"shards": [{"a": a, "b": min(a + shard_rows, len(x)), "n_tokens": min(shard_rows, len(x) - a)}
                                    for a in range(0, len(x), shard_rows)]}

    def check_hook(self, hook):
        assert hook == "h"

    def read_shard(self, s, hook, verify=True):
        return self.x[s["a"]:s["b"]]

    def read_positions(self, s):
        return self.pos[s["a"]:s["b"]]
