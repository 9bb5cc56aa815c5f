"""Authentication: portal JWTs, gateway service tokens, and the dependencies that check them."""

from app.auth.dependencies import AdminUser, CurrentUser, authenticate_gateway
from app.auth.jwt import Principal
from app.auth.service_tokens import ServiceCaller

__all__ = ["AdminUser", "CurrentUser", "Principal", "ServiceCaller", "authenticate_gateway"]
