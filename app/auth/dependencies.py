"""`CurrentUser` and `AdminUser`, declared once and used as annotations; `authenticate_gateway`
for the gateway's lean ASGI routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.jwt import JwtVerifier, Principal
from app.auth.service_tokens import TOKEN_PREFIX, ServiceCaller, ServiceTokenVerifier
from app.errors import Forbidden, Unauthorized

_portal_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="PortalJWT",
    description="A JWT from the portal's identity provider.",
)


def _bearer(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("A bearer token is required.")
    return credentials.credentials


async def get_current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_portal_bearer)],
) -> Principal:
    """The portal user behind the request's JWT."""
    token = _bearer(credentials)
    if token.startswith(TOKEN_PREFIX):
        raise Forbidden("A service token cannot call portal endpoints.")
    verifier: JwtVerifier = request.app.state.jwt_verifier
    return await verifier.verify(token)


async def get_admin_user(user: Annotated[Principal, Depends(get_current_user)]) -> Principal:
    """A portal user with the admin role."""
    if not user.is_admin:
        raise Forbidden("This endpoint needs the admin role.")
    return user


async def authenticate_gateway(
    authorization: str | None, tokens: ServiceTokenVerifier, jwts: JwtVerifier
) -> ServiceCaller:
    """The gateway behind an `Authorization: Bearer svc_…` header (the gateway routes are served
    by `app.usage.router.GatewayApp`, outside FastAPI's dependency injection)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("A bearer token is required.")
    if not token.startswith(TOKEN_PREFIX):
        # A valid portal JWT is a credential of the wrong kind (403); anything else is no
        # credential at all (401, raised by the verifier).
        await jwts.verify(token)
        raise Forbidden("Gateway endpoints need a service token.")
    caller = await tokens.verify(token)
    if caller is None:
        raise Unauthorized("The service token is unknown or revoked.")
    return caller


CurrentUser = Annotated[Principal, Depends(get_current_user)]
AdminUser = Annotated[Principal, Depends(get_admin_user)]
