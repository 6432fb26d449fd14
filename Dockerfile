# The gpt2sql CLI in a container: `docker compose run --rm cli generate "Hello"`.
# The database is a separate container (docker-compose.yml); this image only talks to it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/gpt2sql/.cache/huggingface

# A fixed non-root user. The HF cache directory exists in the image so that a named volume
# mounted there starts out owned by this user (Docker copies ownership into empty volumes).
RUN useradd --create-home --uid 10001 gpt2sql \
 && mkdir -p /home/gpt2sql/.cache/huggingface \
 && chown -R gpt2sql:gpt2sql /home/gpt2sql/.cache

WORKDIR /opt/gpt2sql

# Dependencies first, read from pyproject.toml alone: this layer is rebuilt only when
# the dependency list changes, not on every source edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install -r requirements.txt

# Then the source: the CLI, the loader (with GPT-2's tokenizer files) and the SQL stages.
COPY README.md ./
COPY cli ./cli
COPY loader ./loader
COPY sql ./sql
RUN pip install --no-deps . && rm -rf build *.egg-info

USER gpt2sql
WORKDIR /home/gpt2sql
ENTRYPOINT ["gpt2sql"]
CMD ["--help"]
