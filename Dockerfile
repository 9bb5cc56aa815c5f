# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir "uv==0.13.9"
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
# Dependencies only (no dev group: the test-only Stripe peer never enters the image).
RUN uv sync --frozen --no-dev --no-install-project
COPY app ./app
COPY migrations ./migrations
COPY alembic.ini openapi.json ./
RUN uv sync --frozen --no-dev

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /srv billing
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=billing:billing /src /srv
WORKDIR /srv
USER billing
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 BILLING_ENVIRONMENT=production
EXPOSE 8000
# Migrations run as a separate step (`torouter-billing migrate`, under a PostgreSQL advisory
# lock, so replicas may also run it at once) before a rollout. Forwarded headers are believed
# only from BILLING_FORWARDED_ALLOW_IPS (the load balancer's addresses; default 127.0.0.1).
CMD ["torouter-billing", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-migrate"]
