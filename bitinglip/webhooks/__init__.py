"""Webhooks on async jobs and batches (docs/architecture.md §3.20): a job names a URL and the events it
wants; the process where the job's state changes (a model worker, a batch flow run) POSTs a signed
event there as a Prefect task run with retries, recording every attempt on the job.

`urls` refuses targets an attacker could aim at the platform's own network; `signing` follows
Standard Webhooks; `payload` is what a receiver gets; `store` keeps secrets and attempts; `delivery`
sends."""
