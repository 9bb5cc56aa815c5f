"""Authentication: portal JWTs, gateway service tokens, and the dependencies that check them."""

from app.auth.dependencies import AdminUser, CurrentUser, GatewayCaller
from app.auth.jwt import Principal
from app.auth.service_tokens import ServiceCaller

__all__ = ["AdminUser", "CurrentUser", "GatewayCaller", "Principal", "ServiceCaller"]
