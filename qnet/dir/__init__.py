"""The directory: identities, descriptors, votes, the consensus, and their distribution.

The document modules are sans-I/O: pure over bytes, taking ``now`` (Unix
seconds) where time matters. The wire rules are in ``spec/directory.md``.

* ``qnet.dir.encoding`` — deterministic CBOR with a strict, bounded decoder;
* ``qnet.dir.identity`` — long-term identity keys, node ids, dual signatures;
* ``qnet.dir.descriptor`` — signed node descriptors;
* ``qnet.dir.flags``, ``qnet.dir.vote``, ``qnet.dir.consensus`` — votes and the consensus;
* ``qnet.dir.protocol`` — the directory request messages (pure);
* ``qnet.dir.rotation`` — a node's mix keys by epoch (pure).

The Trio side, above the pure modules: ``qnet.dir.net`` (requests over HTX),
``qnet.dir.authority`` (the authority service) and ``qnet.dir.client``
(fetching, publishing, relay caches).

Every refusal raises a ``qnet.errors.DirectoryError`` subclass with a ``reason``.
"""
