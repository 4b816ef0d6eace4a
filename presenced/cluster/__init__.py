"""Several presenced nodes as one service, coordinated through Redis.

- :mod:`~presenced.cluster.link`: the Redis connections (commands and one pub/sub
  subscription that survives reconnects);
- :mod:`~presenced.cluster.directory`: which node holds which user's sessions, kept with
  heartbeats, repaired when a node dies;
- :mod:`~presenced.cluster.transport`: the router transport that delivers to local sessions
  directly and publishes once per other node that has recipients;
- :mod:`~presenced.cluster.wire`: events as JSON between nodes.

Redis pub/sub is the only channel between nodes: no protocol of our own.
"""
