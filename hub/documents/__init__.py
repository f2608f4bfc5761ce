"""documents: the transcript's PDF and XML, their signatures, and how anyone checks them.

Importing the package applies ``speedups`` (repairs to asn1crypto and pyHanko, for speed), so every
process that signs or validates — the hub and each worker — runs with them.
"""

from hub.documents import speedups

speedups.install()
