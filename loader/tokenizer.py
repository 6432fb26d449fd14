"""(being written) GPT-2 tokenizer tables."""


def ensure_tokenizer(conn) -> None:
    pass
