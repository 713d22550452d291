"""Errors the review service raises; the API maps each to one HTTP status."""

from __future__ import annotations

from ..errors import ClinalignError


class NotFound(ClinalignError):
    """No such batch, image or reviewer (HTTP 404)."""


class Forbidden(ClinalignError):
    """The caller may not act on this object, e.g. an image outside their queue (HTTP 403)."""


class Conflict(ClinalignError):
    """The request contradicts stored state, e.g. a second verdict on one image (HTTP 409)."""


class Invalid(ClinalignError):
    """Well-formed but unacceptable input, e.g. a reason tag not on the checklist (HTTP 422)."""
