# One image for every herdless Python process: origin, web, worker and flower.
# docker-compose.yml picks the role with `command`; the default is the web tier.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

RUN groupadd --system --gid 10001 herdless \
 && useradd --system --uid 10001 --gid herdless --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin herdless

WORKDIR /app

# Dependencies get their own layer, so that a code change does not reinstall them: the
# runtime dependencies of pyproject.toml only (no load tester, no dev tools), at the versions
# constraints.txt pins (`make lock`). The code itself runs from /app (PYTHONPATH).
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" \
        > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Owned by root and read-only for the service user: a compromised process
# cannot rewrite the code it runs.
COPY . .

USER 10001:10001

EXPOSE 8000 9000 9540 5555

CMD ["gunicorn", "-c", "web/gunicorn.conf.py", "--bind", "0.0.0.0:8000", "web.app:create_app()"]
