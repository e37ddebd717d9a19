"""The directory: node identities, descriptors and (later) votes and the consensus.

Sans-I/O: every function here is pure over bytes and takes ``now`` (Unix
seconds) where time matters. The wire rules are in ``spec/directory.md``.

* ``qnet.dir.encoding`` — deterministic CBOR with a strict, bounded decoder;
* ``qnet.dir.identity`` — long-term identity keys, node ids, dual signatures;
* ``qnet.dir.descriptor`` — signed node descriptors.

Every refusal raises a ``qnet.errors.DirectoryError`` subclass with a ``reason``.
"""
