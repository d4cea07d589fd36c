"""Completion webhooks: the delivery process (`pinksea webhooks`), its URL rules (SSRF), the
events and their Standard Webhooks signatures. See service.py."""
