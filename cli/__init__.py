"""gpt2sql: GPT-2 inside PostgreSQL (the installed package; `cli/` in the checkout)."""
