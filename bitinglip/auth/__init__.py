"""Identity and limits: users, passwords, API keys, login tokens, rate limits, quotas, audit."""
