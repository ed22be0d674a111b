"""acceleration-service: converts OCI images into lazy-pulling images.

Layers, outermost first: ``server`` (HTTP API) → ``tasks`` (durable queue, workers) → ``converter``
(resolve, pull, convert, push) → ``drivers`` (one adapter per format) → ``formats`` (pure byte-level
libraries). ``registry``, ``content`` and ``oci`` serve the converter; ``config``, ``errors`` and
``metrics`` are leaves anyone may import.
"""

__version__ = "0.1.0"
