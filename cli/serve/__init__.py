"""`gpt2sql serve`: a local web page over the glass-box SQL functions (docs/serve.md)."""
