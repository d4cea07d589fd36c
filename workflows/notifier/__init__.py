"""``pinksea notify``: one e-mail per low-balance crossing (CreditAccount.LowBalanceReached).

- service.py: the consumer loop (credits topic -> record -> e-mail -> Kafka offset);
- messages.py: what the e-mail says;
- transports.py: SMTP (the local stack) and Amazon SES v2 (production);
- preferences.py: the user's address and unsubscribe flag (written by the API).
"""
