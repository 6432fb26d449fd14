"""`gpt2sql generate PROMPT`: stream a continuation, one SQL round trip per token."""

from __future__ import annotations

import click

from gpt2sql.errors import Gpt2SqlError
from gpt2sql.main import connection
from gpt2sql.tokenize_cmd import checked_text, read_stdin


def _ensure_model(ctx: click.Context, model: str | None) -> None:
    """With no model loaded at all, load gpt2 from the hub (or say how to load one)."""
    if model or connection(ctx).execute("SELECT EXISTS (SELECT 1 FROM gpt2.models)").fetchone()[0]:
        return
    from gpt2sql.model_cmd import load_into

    try:  # huggingface_hub shows the download, load_into the load, each with a progress bar
        load_into(ctx, "gpt2", None, "float32")
    except Gpt2SqlError as e:
        raise Gpt2SqlError(f"no model is loaded, and gpt2 could not be fetched: {e}") from None


PREFILL_CHUNK = 32  # prompt tokens per round trip while a progress bar is shown


def _prefill(conn, n_prompt: int) -> None:
    """Process a long prompt in pieces behind a progress bar (a short one: in the first step)."""
    import sys

    if n_prompt <= PREFILL_CHUNK:
        return
    with click.progressbar(length=n_prompt, label="prompt", file=sys.stderr, show_eta=True) as bar:
        left = n_prompt
        while left > 0:
            now = conn.execute("SELECT gpt2.generate_prefill(%s)", (PREFILL_CHUNK,)).fetchone()[0]
            bar.update(left - now)
            left = now


def _nonempty_stops(ctx, param, stops: tuple[str, ...]) -> tuple[str, ...]:
    if "" in stops:  # every text contains '': it would stop before the first token
        raise click.BadParameter("a stop string cannot be empty")
    return stops


def _check_top_k(ctx: click.Context, no_top_k: bool) -> None:
    from click.core import ParameterSource

    if no_top_k and ctx.get_parameter_source("top_k") is not ParameterSource.DEFAULT:
        raise click.UsageError("--top-k and --no-top-k exclude each other: give one", ctx)


@click.command("generate")
@click.argument("prompt")
@click.option("--model", "-m", help="Model to use. Default: the latest loaded (see gpt2sql models).")
@click.option("--max-tokens", "-n", type=click.IntRange(min=1), default=40, show_default=True,
              help="Stop after this many new tokens.")
@click.option("--temperature", "-t", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Softmax temperature; 0 is greedy decoding.")
@click.option("--top-k", type=click.IntRange(min=1), default=50, show_default=True,
              help="Sample among the k most likely tokens.")
@click.option("--no-top-k", is_flag=True, help="Sample among all tokens (no top-k cut); not with --top-k.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True,
              help="Nucleus sampling: the smallest set of tokens with this much probability.")
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), help="Make the sampled tokens reproducible.")
@click.option("--stop", multiple=True, callback=_nonempty_stops,
              help="Stop once the generated text contains this string; the output ends with it (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per token: step, id, text.")
@click.pass_context
def generate_cmd(ctx, prompt, model, max_tokens, temperature, top_k, no_top_k, top_p, seed, stop, as_json):
    """Continue PROMPT, printing tokens as they are computed.

    PROMPT '-' reads standard input verbatim, a final newline included (echo adds one;
    printf '%s' does not). A --stop string ends the output, as in Hugging Face
    transformers (OpenAI's API leaves it out).
    """
    import codecs
    import json

    _check_top_k(ctx, no_top_k)
    prompt = checked_text(read_stdin() if prompt == "-" else prompt)
    _ensure_model(ctx, model)
    conn = connection(ctx)
    n_prompt = conn.execute("SELECT gpt2.generate_start(%s, %s, %s, %s, %s, %s, %s, %s)",
                            (prompt, model, max_tokens, temperature, None if no_top_k else top_k, top_p, seed,
                             list(stop) or None)).fetchone()[0]
    _prefill(conn, n_prompt)
    if not as_json:
        click.echo(prompt, nl=False)
    eos = conn.execute("SELECT gpt2.eos_id()").fetchone()[0]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # tokens can split a character
    while True:
        row = conn.execute("SELECT step, id, text, bytes, done FROM gpt2.generate_next()").fetchone()
        if row is None:
            break
        step, token, text, data, done = row
        if as_json:
            click.echo(json.dumps({"step": step, "id": token, "text": text}, ensure_ascii=False))
        elif token != eos:
            click.echo(decoder.decode(bytes(data or b"")), nl=False)
        if done:
            break
    if not as_json:
        click.echo(decoder.decode(b"", final=True))


COMMANDS = [generate_cmd]
