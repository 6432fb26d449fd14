"""`gpt2sql generate PROMPT` / `--batch FILE`: stream a continuation, one SQL round trip per step."""

from __future__ import annotations

import contextlib
import sys

import click

from gpt2sql.errors import Gpt2SqlError
from gpt2sql.main import connection
from gpt2sql.tokenize_cmd import checked_text, nonempty, read_file, read_stdin

INT4_MAX = 2**31 - 1  # the SQL functions take int


def _ensure_model(ctx: click.Context, model: str | None) -> None:
    """With no model loaded at all, load gpt2 from the hub (or say how to load one)."""
    if model or connection(ctx).execute("SELECT EXISTS (SELECT 1 FROM gpt2.models)").fetchone()[0]:
        return
    from gpt2sql.model_cmd import load_into

    try:  # huggingface_hub shows the download, load_into the load, each with a progress bar
        load_into(ctx, "gpt2", None, "float32")
    except Gpt2SqlError as e:
        raise Gpt2SqlError(f"no model is loaded, and gpt2 could not be fetched: {e}") from None


class Progress:
    """Progress bars on stderr fed by the server's 'gpt2sql progress: <what> <done>/<total>'
    notices (sql/01_schema.sql gpt2.progress), which arrive while a statement runs.

    with progress.bar("prompt", n_layer): ...   shows one bar for a statement (one tick per layer);
    a decode step that slides the context window announces itself ('slide') and gets a bar too."""

    def __init__(self, conn, n_layer: int):
        self.n_layer, self.current = n_layer, None
        conn.execute("SELECT set_config('gpt2sql.progress', 'on', false)")
        conn.add_notice_handler(self._notice)

    @contextlib.contextmanager
    def bar(self, label: str):
        with click.progressbar(length=self.n_layer, label=label, file=sys.stderr, show_eta=True) as bar:
            self.current = bar
            try:
                yield
            finally:
                self.current = None

    @contextlib.contextmanager
    def step(self):
        """Around a decode step: quiet, unless the window slides."""
        try:
            yield
        finally:
            if self.current is not None:
                self.current.render_finish()
                self.current = None

    def _notice(self, diag) -> None:
        what, _, count = (diag.message_primary or "").removeprefix("gpt2sql progress: ").partition(" ")
        if what == "slide" and self.current is None:
            click.echo("", err=True)
            self.current = click.progressbar(length=self.n_layer, file=sys.stderr, show_eta=True,
                                             label="the context is full: re-reading the last half")
        elif what == "layer" and self.current is not None:
            self.current.update(1)


def _finite(ctx, param, value: float) -> float:
    import math

    if not math.isfinite(value):  # FloatRange lets NaN through: every comparison with it is false
        raise click.BadParameter(f"must be a finite number, not {value}")
    return value


def _nonempty_stops(ctx, param, stops: tuple[str, ...]) -> tuple[str, ...]:
    if "" in stops:  # every text contains '': it would stop before the first token
        raise click.BadParameter("a stop string cannot be empty")
    return stops


def _check_arguments(ctx: click.Context, prompt: str | None, batch: str | None, no_top_k: bool) -> None:
    """Usage errors for contradictions, and for options that would silently do nothing."""
    from click.core import ParameterSource

    given = lambda name: ctx.get_parameter_source(name) is not ParameterSource.DEFAULT  # noqa: E731
    if no_top_k and given("top_k"):
        raise click.UsageError("--top-k and --no-top-k exclude each other: give one", ctx)
    if (prompt is None) == (batch is None):
        raise click.UsageError("give a PROMPT or --batch FILE (one of them)", ctx)
    json_out = ctx.params["as_json"] or batch is not None
    if given("top_logprobs") and not json_out:  # the text output has no place for them
        raise click.UsageError("--top-logprobs goes with --json or --batch (the text output shows no logprobs)", ctx)
    if ctx.params["no_echo"] and json_out:  # JSON lines never echo the prompt
        raise click.UsageError("--no-echo goes with the text output (--json and --batch never echo the prompt)", ctx)


def _batch_prompts(path: str) -> list[str]:
    """One prompt per line of FILE ('-': standard input), without the line ends (LF or CR LF);
    a blank line is an error naming it, so that prompt i is always line i."""
    text = read_file(path)
    where = "standard input" if path == "-" else repr(path)
    # subtle: not str.splitlines, which also cuts at form feeds, U+2028 and the like
    lines = [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")] if text else []
    if not lines:
        raise Gpt2SqlError(f"{where} holds no prompts (one per line)")
    return [nonempty(checked_text(line), f"line {i} of {where}") for i, line in enumerate(lines, start=1)]


@click.command("generate")
@click.argument("prompt", required=False)
@click.option("--batch", metavar="FILE",
              help="Generate for every line of FILE ('-': standard input) together; prints JSON lines.")
@click.option("--model", "-m", help="Model to use. Default: the latest loaded (see gpt2sql models).")
@click.option("--max-tokens", "-n", type=click.IntRange(min=1, max=INT4_MAX), default=40, show_default=True,
              help="Stop after this many new tokens.")
@click.option("--temperature", "-t", type=click.FloatRange(min=0, max=1e6), default=1.0, show_default=True,
              callback=_finite, help="Softmax temperature; 0 is greedy decoding.")
@click.option("--top-k", type=click.IntRange(min=1, max=INT4_MAX), default=50, show_default=True,
              help="Sample among the k most likely tokens.")
@click.option("--no-top-k", is_flag=True, help="Sample among all tokens (no top-k cut); not with --top-k.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True,
              callback=_finite, help="Nucleus sampling: the smallest set of tokens with this much probability.")
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), help="Make the sampled tokens reproducible.")
@click.option("--stop", multiple=True, callback=_nonempty_stops,
              help="Stop once the generated text contains this string; the output ends with it (repeatable).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per token: step, id, text and logprob (log-probability under the model).")
@click.option("--top-logprobs", type=click.IntRange(min=0, max=20), default=0, show_default=True,
              help="With --json or --batch: also the N most likely tokens at each step, with their logprobs.")
@click.option("--no-echo", is_flag=True, help="Print only the continuation, not the prompt before it.")
@click.pass_context
def generate_cmd(ctx, prompt, batch, model, max_tokens, temperature, top_k, no_top_k, top_p, seed, stop, as_json,
                 top_logprobs, no_echo):
    """Continue PROMPT, printing tokens as they are computed.

    PROMPT '-' reads standard input verbatim, a final newline included (echo adds one;
    printf '%s' does not). The prompt is printed before its continuation (not with
    --no-echo). An empty prompt is an error, and so is a blank line of a --batch FILE.
    A prompt longer than the model's context is continued from its end (a note on
    stderr says so). A --stop string ends the output, as in Hugging Face transformers
    (OpenAI's API leaves it out). --batch decodes many prompts together: every weight
    is read once per step for all of them.
    """
    _check_arguments(ctx, prompt, batch, no_top_k)
    if batch is not None:
        prompts = _batch_prompts(batch)
    else:
        prompts = [nonempty(checked_text(read_stdin() if prompt == "-" else prompt), "the prompt")]
    _ensure_model(ctx, model)
    conn = connection(ctx)
    lengths = conn.execute("SELECT gpt2.generate_batch_start(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                           (prompts, model, max_tokens, temperature, None if no_top_k else top_k, top_p, seed,
                            list(stop) or None, top_logprobs)).fetchone()[0]
    name, n_layer, n_positions = conn.execute("SELECT m.name, m.n_layer, m.n_positions FROM gpt2.models m "
                                              "JOIN gen_seq g ON g.model = m.name LIMIT 1").fetchone()
    for i, n in enumerate(lengths, start=1):  # the SQL side keeps the end of such a prompt
        if n > n_positions:
            click.echo(f"note: {'the prompt' if batch is None else f'prompt {i}'} has {n} tokens and model {name!r} "
                       f"sees at most {n_positions}: the continuation follows from its end", err=True)
    progress = Progress(conn, n_layer)
    if sum(lengths) > 32:  # a short prompt is processed by the first step, without a bar
        with progress.bar(f"prompt ({sum(lengths)} tokens)"):
            conn.execute("SELECT gpt2.generate_prefill()")
    if batch is not None:
        _print_batch(conn, progress, len(prompts), max_tokens)
    else:
        _print_one(conn, progress, None if no_echo else prompts[0], as_json, top_logprobs)


def _token_json(row, top_logprobs: int, prompt: int | None = None) -> str:
    import json

    step, token, text, logprob, top = row
    out = {} if prompt is None else {"prompt": prompt}
    out.update(step=step, id=token, text=text, logprob=logprob)
    if top_logprobs:
        out["top_logprobs"] = top
    return json.dumps(out, ensure_ascii=False)


def _print_one(conn, progress: Progress, echo: str | None, as_json: bool, top_logprobs: int) -> None:
    import codecs

    if echo is not None and not as_json:
        click.echo(echo, nl=False)
    eos = conn.execute("SELECT gpt2.eos_id()").fetchone()[0]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # tokens can split a character
    while True:
        with progress.step():
            row = conn.execute("SELECT step, id, text, logprob, top, bytes, done FROM gpt2.generate_next()").fetchone()
        if row is None:
            break
        data, done = row[5], row[6]
        if as_json:
            click.echo(_token_json(row[:5], top_logprobs))
        elif row[1] != eos:
            click.echo(decoder.decode(bytes(data or b"")), nl=False)
        if done:
            break
    if not as_json:
        click.echo(decoder.decode(b"", final=True))


def _print_batch(conn, progress: Progress, n_prompts: int, max_tokens: int) -> None:
    """JSON lines as the steps come, {"prompt": i, "step": ...}; a bar of steps on stderr."""
    top = conn.execute("SELECT top_logprobs FROM gen_seq LIMIT 1").fetchone()[0]
    with click.progressbar(length=max_tokens, label=f"{n_prompts} prompts", file=sys.stderr, show_eta=True) as bar:
        while True:
            with progress.step():
                rows = conn.execute("SELECT prompt, step, id, text, logprob, top FROM gpt2.generate_batch_next()").fetchall()
            if not rows:
                break
            for prompt, *rest in rows:
                click.echo(_token_json(rest, top, prompt))
            bar.update(1)


COMMANDS = [generate_cmd]
