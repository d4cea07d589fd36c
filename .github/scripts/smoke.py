"""End-to-end check of a deployed Pinksea, as a user would see it (.github/workflows/release.yml).

    smoke.py --base-url https://staging.example.com/api                  # health, sign-in, a job
    smoke.py --base-url https://example.com/api --health-only --duration 300

1. `/healthz` and `/readyz` answer 200 (waiting up to --ready-timeout for readiness);
2. sign-in: the test user signs in to Cognito as the web app does (SRP on the public web
   client: --user-pool-id, --client-id, E2E_USERNAME, E2E_PASSWORD), and `GET /v1/me` accepts
   the ID token. E2E_TOKEN instead skips Cognito (a token the API accepts, e.g. locally
   `pinksea dev-token`);
3. a job end to end: `POST /v1/jobs` (the user needs a plan with credits and --model in it),
   read back with the returned position until it is completed, then its first image's
   presigned URL must serve a PNG.

--health-only: steps 1 only, repeated every --interval seconds for --duration seconds; it
fails on --max-failures consecutive failed rounds (the production health check).
Exits 0 when everything passed, 1 otherwise; it prints every request it makes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

TERMINAL = {"completed", "failed", "cancelled", "rejected"}
PNG = b"\x89PNG\r\n\x1a\n"


class SmokeError(Exception):
    pass


def _lower(headers: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}


class Api:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        url = path if "://" in path else self.base + path
        h = {"Accept": "application/json", "User-Agent": "pinksea-smoke"}
        if self.token and "://" not in path:
            h["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        req = urllib.request.Request(url, data=data, headers=h, method=method)
        # The answer's header names in lower case: they are case-insensitive, and servers
        # differ (uvicorn and moto's S3 send `retry-after`, `content-type`).
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, _lower(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, _lower(e.headers), e.read()
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            return 0, {}, str(e).encode()

    def json(
        self,
        method: str,
        path: str,
        expect: set[int],
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        retry_for: float = 60,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The JSON answer; 429 and 503 (rate limit, not yet consistent) are retried after
        their Retry-After for up to retry_for seconds."""
        deadline = time.monotonic() + retry_for
        while True:
            status, resp_headers, raw = self.request(method, path, body, headers)
            print(f"  {method} {path} -> {status}", flush=True)
            if status in expect:
                return (json.loads(raw) if raw else {}), resp_headers
            if status in (429, 503) and time.monotonic() < deadline:
                time.sleep(min(float(resp_headers.get("retry-after", "1") or 1), 10))
                continue
            raise SmokeError(f"{method} {path}: {status} {raw[:500]!r}")


def check_health(api: Api, ready_timeout: float) -> None:
    status, _, raw = api.request("GET", "/healthz")
    print(f"  GET /healthz -> {status}", flush=True)
    if status != 200:
        raise SmokeError(f"/healthz: {status} {raw[:300]!r}")
    deadline = time.monotonic() + ready_timeout
    while True:
        status, _, raw = api.request("GET", "/readyz")
        print(f"  GET /readyz -> {status}", flush=True)
        if status == 200:
            return
        if time.monotonic() >= deadline:
            raise SmokeError(f"/readyz: {status} after {ready_timeout:.0f}s: {raw[:300]!r}")
        time.sleep(5)


def sign_in(user_pool_id: str, client_id: str, username: str, password: str) -> str:
    """The ID token of a USER_SRP_AUTH sign-in on the web client (what the web app does)."""
    import boto3
    from pycognito.aws_srp import AWSSRP

    region = user_pool_id.split("_", 1)[0]
    client = boto3.client("cognito-idp", region_name=region)
    srp = AWSSRP(
        username=username,
        password=password,
        pool_id=user_pool_id,
        client_id=client_id,
        client=client,
    )
    result = srp.authenticate_user()
    token = result.get("AuthenticationResult", {}).get("IdToken")
    if not token:
        raise SmokeError(f"sign-in ended in challenge {result.get('ChallengeName')!r}")
    return str(token)


def run_job(api: Api, model: str, job_timeout: float) -> dict[str, Any]:
    request = {
        "model": model,
        "prompt": "a lighthouse on a cliff at dawn (pinksea release check)",
        "steps": 4,
        "width": 512,
        "height": 512,
        "seed": 1234,
    }
    accepted, _ = api.json(
        "POST", "/v1/jobs", {202}, body=request, headers={"Idempotency-Key": uuid.uuid4().hex}
    )
    job_id, position = accepted["job_id"], accepted["position"]
    print(f"  job {job_id}: {accepted['status']}, hold {accepted['hold_credits']} credits")
    deadline = time.monotonic() + job_timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job, _ = api.json(
            "GET", f"/v1/jobs/{job_id}", {200}, headers={"X-Min-Position": str(position)}
        )
        if job["status"] in TERMINAL:
            break
        time.sleep(5)
    else:
        raise SmokeError(f"job {job_id} still {job.get('status')} after {job_timeout:.0f}s")
    if job["status"] != "completed":
        raise SmokeError(
            f"job {job_id} {job['status']}: "
            f"{job.get('failure_reason') or job.get('rejection_reason')} "
            f"{job.get('failure_fault') or job.get('rejection_detail') or ''}".strip()
        )
    if not job.get("images"):
        raise SmokeError(f"job {job_id} completed without images")
    print(
        f"  job {job_id}: completed, GPU {job['gpu_ms']} ms, charged {job['charged_credits']} "
        f"credits, {len(job['images'])} image(s)"
    )
    image, _ = api.json("GET", job["images"][0]["href"], {200})
    status, headers, raw = api.request("GET", image["url"])
    print(f"  GET <presigned image URL> -> {status} {headers.get('content-type', '')}")
    if status != 200 or not raw.startswith(PNG):
        raise SmokeError(f"image {image['name']}: {status}, not a PNG ({raw[:16]!r})")
    return job


def health_watch(
    api: Api, duration: float, interval: float, max_failures: int, ready_timeout: float
) -> None:
    end = time.monotonic() + duration
    failures = rounds = 0
    while True:
        rounds += 1
        try:
            check_health(api, ready_timeout=0)
            failures = 0
        except SmokeError as e:
            failures += 1
            print(f"  round {rounds}: {e} ({failures} in a row)", flush=True)
            if failures >= max_failures:
                raise SmokeError(f"{failures} failed health rounds in a row") from None
        if time.monotonic() >= end:
            break
        time.sleep(interval)
    print(f"  {rounds} health rounds, none failed {max_failures} times in a row")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="the API as users reach it")
    parser.add_argument("--ready-timeout", type=float, default=300)
    parser.add_argument("--health-only", action="store_true")
    parser.add_argument("--duration", type=float, default=300)
    parser.add_argument("--interval", type=float, default=15)
    parser.add_argument("--max-failures", type=int, default=3)
    parser.add_argument("--user-pool-id", default=os.environ.get("E2E_USER_POOL_ID", ""))
    parser.add_argument("--client-id", default=os.environ.get("E2E_CLIENT_ID", ""))
    parser.add_argument("--model", default=os.environ.get("E2E_MODEL") or "sd-1.5")
    parser.add_argument("--job-timeout", type=float, default=900)
    args = parser.parse_args(argv)

    api = Api(args.base_url)
    try:
        print("health", flush=True)
        if args.health_only:
            check_health(api, args.ready_timeout)
            health_watch(api, args.duration, args.interval, args.max_failures, args.ready_timeout)
            return 0
        check_health(api, args.ready_timeout)

        print("sign-in", flush=True)
        token = os.environ.get("E2E_TOKEN", "")
        if not token:
            missing = [
                n
                for n, v in (
                    ("--user-pool-id", args.user_pool_id),
                    ("--client-id", args.client_id),
                    ("E2E_USERNAME", os.environ.get("E2E_USERNAME")),
                    ("E2E_PASSWORD", os.environ.get("E2E_PASSWORD")),
                )
                if not v
            ]
            if missing:
                raise SmokeError(f"sign-in needs {', '.join(missing)}")
            token = sign_in(
                args.user_pool_id,
                args.client_id,
                os.environ["E2E_USERNAME"],
                os.environ["E2E_PASSWORD"],
            )
        api.token = token
        me, _ = api.json("GET", "/v1/me", {200})
        print(f"  signed in as {me.get('user_id')}, plan {me.get('plan', {}).get('slug', '?')}")

        print("job", flush=True)
        run_job(api, args.model, args.job_timeout)
    except SmokeError as e:
        print(f"::error::smoke check failed: {e}", flush=True)
        return 1
    print("smoke check passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
