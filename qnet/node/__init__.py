"""The node program (``qnet node --config node.toml``).

* ``qnet.node.config``: the TOML configuration as frozen dataclasses (``load_config``);
* ``qnet.node.keys``: the data directory and every key in it (``KeyStore``);
* ``qnet.node.metrics``: counters and the optional Prometheus endpoint;
* ``qnet.node.logging``: structured logs with addresses scrubbed by default;
* ``qnet.node.app``: start-up, the role and link-service interfaces, graceful stop.
"""
