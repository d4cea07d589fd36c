"""The commands of PinkseaApplication, one module per aggregate they start from.

There is one Application and one event store (domain/application.py): a command that touches
a job and its account must save both in one transaction, which two applications could not.
The commands are split by aggregate only so that each module stays readable: every group is a
mixin on ``CommandStore`` (store.py), and PinkseaApplication is their composition, so callers
keep one object and one set of names.

- store.py: ``@command`` (the retry on a version conflict and the returned position, once),
  ``save`` (with a consumer's tracking), the reads, and the one use of the library's private
  API;
- results.py: what commands return;
- jobs.py: a job and its account, from dispatch to settlement, composed with submissions.py
  (a new job and its hold; admission.py, the plan's say on it) and images.py (the owner's
  word on a job's images);
- accounts.py: a credit account alone;
- subscriptions.py: sign-up and the payment provider's word, in domain values;
- plans.py: the plans an admin assigns, tester windows and enterprise contracts.
"""
