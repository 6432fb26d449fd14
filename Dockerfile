# The gpt2sql CLI in a container: `docker compose run --rm cli generate "Hello"`.
# The database is a separate container (docker-compose.yml); this image only talks to it.
#
# The base image is pinned to an exact Python release and Debian version, so a rebuild
# gets the same interpreter. To refresh it: pick the newest 3.11.x-slim-bookworm tag on
# https://hub.docker.com/_/python (or `docker pull python:3.11-slim-bookworm` and read
# `docker run --rm python:3.11-slim-bookworm python -V`), put it here, and rebuild with
# `docker compose build --pull`. For a byte-identical base, append the digest that
# `docker inspect --format '{{index .RepoDigests 0}}' python:<tag>` prints (@sha256:...).
FROM python:3.11.14-slim-bookworm

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
# the dependency list changes, not on every source edit. Only the required ones: the
# embedded server (the `embedded` extra) is never used here, the database is a container.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install -r requirements.txt

# Then the source: the CLI, the loader (with GPT-2's tokenizer files) and the SQL stages.
COPY README.md LICENSE ./
COPY cli ./cli
COPY loader ./loader
COPY sql ./sql
RUN pip install --no-deps . && rm -rf build *.egg-info

USER gpt2sql
WORKDIR /home/gpt2sql
ENTRYPOINT ["gpt2sql"]
CMD ["--help"]
