"""Path parameters the operators' routes share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from app.schemas import CleanToken

UserId = Annotated[CleanToken, Path(min_length=1, max_length=255)]
"""The user an operator acts on (the id in their JWT's `sub`)."""
