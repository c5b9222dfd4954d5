"""The backend conformance suite on our own backends, collected here by a star import.

``conformance_backend`` is parametrised over the ``--plait-backend`` selection (default: every
built-in backend; a backend that cannot be had is skipped unless ``PLAIT_REQUIRE_BACKENDS`` names
it). The same tests run against any installed backend with
``pytest --pyargs plait.testing.conformance --plait-conformance=URL``.
"""

from plait.testing.conformance import *  # noqa: F403
