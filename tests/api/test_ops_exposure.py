"""What the API serves besides /v1 (issue 17): locally /docs, /openapi.json and /metrics on
the API's port, as developers use them; deployed, no docs, and /metrics on a port of its own
(``pinksea api --metrics-port``) that the load balancer does not forward. The deployed
values come from the Terraform, and the production rehearsal scrapes the port it chose.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from infra.settings import Settings
from tests.api.conftest import REPO, api_process, free_port


@contextlib.asynccontextmanager
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app without its services: enough for routes that need none."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
        yield c


async def test_local_defaults_keep_the_docs_and_metrics_on_the_api_port() -> None:
    async with client(create_app(Settings())) as c:
        assert (await c.get("/docs")).status_code == 200
        assert (await c.get("/openapi.json")).json()["info"]["title"] == "Pinksea API"
        r = await c.get("/metrics")
        assert r.status_code == 200 and "pinksea_api_requests_total" in r.text


async def test_docs_off_and_metrics_elsewhere_leave_nothing_on_the_api_port() -> None:
    settings = Settings(api_docs_enabled=False, api_metrics_port=9100)
    async with client(create_app(settings)) as c:
        for path in ("/docs", "/openapi.json", "/metrics", "/docs/oauth2-redirect"):
            r = await c.get(path)
            assert r.status_code == 404, path
            assert r.headers["content-type"].startswith("application/problem+json")
        assert (await c.get("/healthz")).status_code == 200


@pytest.mark.integration
def test_pinksea_api_serves_metrics_on_its_own_port(api_settings: Settings) -> None:
    """As deployed: ``--metrics-port`` and PINKSEA_API_DOCS_ENABLED=false."""
    metrics_port = free_port()
    with api_process(
        api_settings, "--metrics-port", str(metrics_port), PINKSEA_API_DOCS_ENABLED="false"
    ) as url:
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert httpx.get(url + path, timeout=5).status_code == 404, path
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert scraped.status_code == 200
        assert 'pinksea_api_requests_total{method="GET",route="/healthz",status="200"}' in (
            scraped.text
        )


# ---------------------------------------------------------------------- as deployed


@pytest.fixture(scope="module")
def deployed_api() -> object:
    pytest.importorskip("hcl2")  # the rendering reads HCL with python-hcl2 (the dev extra)
    from rehearsal.render import rehearsal_vars, render_tasks

    tasks = render_tasks(rehearsal_vars("http://127.0.0.1:30090/pool"), ("basic",))
    return next(t for t in tasks if t.name == "api")


def test_deployed_api_trusts_only_the_load_balancer_and_hides_docs_and_metrics(
    deployed_api: object,
) -> None:
    from rehearsal.render import tfvars

    env = deployed_api.environment  # type: ignore[attr-defined]
    command: list[str] = deployed_api.command  # type: ignore[attr-defined]
    # The load balancer lives in the public subnets: the only peers whose X-Forwarded-For
    # names the client.
    assert env["PINKSEA_FORWARDED_ALLOW_IPS"] == ",".join(tfvars()["public_subnet_cidrs"])
    settings = Settings(
        _env_file=None,
        forwarded_allow_ips=env["PINKSEA_FORWARDED_ALLOW_IPS"],
        api_docs_enabled=env["PINKSEA_API_DOCS_ENABLED"],
    )
    assert settings.api_docs_enabled is False
    metrics_port = command[command.index("--metrics-port") + 1]
    assert command[command.index("--port") + 1] == "8080"
    assert metrics_port not in ("0", "8080")
    # The container publishes the API's port only: the load balancer cannot reach /metrics.
    ecs = (REPO / "infra/terraform/modules/compute/ecr_ecs.tf").read_text()
    assert 'portMappings = each.key == "api" ? [{ containerPort = 8080, protocol = "tcp" }]' in ecs


def test_the_rehearsal_scrapes_the_api_where_it_serves_metrics(deployed_api: object) -> None:
    from rehearsal.run import local_args

    args, _ = local_args(deployed_api, 18080, 19100, 19103)  # type: ignore[arg-type]
    assert args[args.index("--port") + 1] == "18080"
    assert args[args.index("--metrics-port") + 1] == "19100"
