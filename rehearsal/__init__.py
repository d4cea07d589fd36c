"""The production rehearsal (``make rehearsal``): every process started with the environment
rendered from the production task definitions (infra/terraform), only the endpoints swapped for a
private local stack, dev tokens off; then the paths a real user takes are proved.

- ``oidc``: sign-in through the local OpenID Connect provider (Cognito-shaped tokens);
- ``render``: the task definitions' environments, rendered from Terraform, and the swap list;
- ``stack``: the private stack (its own ports and data) and the processes;
- ``checks``: sign-in, Kafka over SASL_SSL, Stripe Checkout and webhooks, the job flow, the
  signed image URL, the ledger;
- ``run``: the orchestration and the summary (``python -m rehearsal``).
"""
