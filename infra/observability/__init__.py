"""Observability as code: the Grafana dashboard and Prometheus rules (data files beside this
package), the process-level instrumentation shared by every ``pinksea`` process
(:mod:`infra.observability.instrument`), and the check that everything the dashboard, the rules
and the CloudWatch alarms name is really emitted (:mod:`infra.observability.check`)."""
