"""The tables. Alembic migrations in ``db/migrations`` create and change them."""

from __future__ import annotations

import sqlalchemy as sa

from jobbalancer.db.types import Bytes, LongText, UTCDateTime

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Name = sa.String(200)

# Ids are never handed out twice: a new user must not get a deleted user's id (and with it
# the jobs that still name that id), nor a new job or script an old one's. PostgreSQL's
# sequences and MariaDB's AUTO_INCREMENT (persisted since 10.2.4) never go back; SQLite
# reuses the highest id after a delete unless the table is AUTOINCREMENT, as every table
# whose ids others refer to is here.

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", Name, nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255)),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("commands_allowed", sa.Boolean, nullable=False, default=True),
    # Names of the worker classes the user may submit to; NULL = all of them.
    sa.Column("worker_classes", sa.JSON),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sqlite_autoincrement=True,  # ids are never reused (above)
)

# Failed web logins, per account and source address, and per address alone (account
# "*"): each failure past a few free ones makes that address wait longer before its next
# try. The account is a digest of the name tried, existing or not, so the table tells
# nothing about which names exist and holds no typed-in passwords.
login_failures = sa.Table(
    "login_failures",
    metadata,
    sa.Column("account", sa.String(64), primary_key=True),
    sa.Column("address", sa.String(64), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("last_failure_at", UTCDateTime, nullable=False),
    sa.Column("next_try_at", UTCDateTime, nullable=False),
    sa.Index(None, "last_failure_at"),
)

# Web UI sessions. The cookie holds a random token; only its SHA-256 is stored, so a
# database dump does not hand out live sessions.
web_sessions = sa.Table(
    "web_sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("last_seen_at", UTCDateTime, nullable=False),
    sa.Index(None, "user_id"),
    sa.Index(None, "expires_at"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", Name, nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_used_at", UTCDateTime),
    # What the key may do (read, submit, operate, admin), never more than its user's role
    # allows at the time of each request; and when it stops working (NULL: never).
    sa.Column("scope", sa.String(16), nullable=False, server_default="read"),
    sa.Column("expires_at", UTCDateTime),
    sa.Index(None, "user_id"),
    sqlite_autoincrement=True,  # ids are never reused (above)
)

worker_classes = sa.Table(
    "worker_classes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", Name, nullable=False, unique=True),
    sa.Column("max_jobs", sa.Integer, nullable=False),
    sa.Column("description", sa.Text, nullable=False, default=""),
    # Placement: what its jobs request unless they say ({"cpus", "memory", "gpus",
    # "constraints"}); NULL: nothing.
    sa.Column("requests", sa.JSON),
    sqlite_autoincrement=True,  # ids are never reused (above)
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", Name, nullable=False, unique=True),
    sa.Column("host", sa.String(255), nullable=False),
    # Which machine the worker runs on (an id it keeps from its first start), so that two
    # hosts with one host name, cloned VMs or containers, are told apart.
    sa.Column("machine_id", sa.String(64)),
    # Which process holds the row now (boot id, pid namespace, pid, start time): a second
    # process for the same name is seen for what it is.
    sa.Column("instance", sa.String(160)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("worker_class_id", sa.ForeignKey("worker_classes.id"), nullable=False),
    # The worker's own limit; NULL = its class's.
    sa.Column("max_jobs", sa.Integer),
    # A new value every time a worker process (re)registers under this name: the worker
    # presents it with every write, so a process that was declared dead cannot report.
    sa.Column("session", sa.String(32), nullable=False),
    sa.Column("pid", sa.Integer),
    sa.Column("version", sa.String(40), nullable=False, default=""),
    sa.Column("load", sa.Float),
    sa.Column("cpu_count", sa.Integer),
    sa.Column("memory_total", sa.BigInteger),
    sa.Column("memory_available", sa.BigInteger),
    # Placement (jobbalancer/resources.py): what the worker offers its jobs, detected or
    # set (--cpus, --memory, --gpus), and its labels (--label); NULL capacity: not limited.
    sa.Column("cpus", sa.Double),
    sa.Column("memory", sa.BigInteger),
    sa.Column("gpus", sa.Integer),
    sa.Column("labels", sa.JSON),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("last_heartbeat_at", UTCDateTime, nullable=False),
    sa.Index(None, "state"),
    sqlite_autoincrement=True,  # ids are never reused (above)
)

scripts = sa.Table(
    "scripts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", Name, nullable=False, unique=True),
    sa.Column("interpreter", sa.String(255), nullable=False),
    sa.Column("content", LongText, nullable=False),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # The typed parameters it declares (scriptparams); null: none, params as given.
    sa.Column("parameters", sa.JSON),
    # Placement: what its jobs request unless they say (as worker_classes.requests).
    sa.Column("requests", sa.JSON),
    sqlite_autoincrement=True,  # ids are never reused (above)
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("command", LongText),
    # What the script was when the job was submitted: a restart runs exactly the same.
    sa.Column("script_id", sa.Integer),
    sa.Column("script_name", Name),
    sa.Column("interpreter", sa.String(255)),
    sa.Column("script_content", LongText),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("env", sa.JSON, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("watchdog", sa.Float),
    sa.Column("worker_class_id", sa.ForeignKey("worker_classes.id"), nullable=False),
    sa.Column("need_realtime", sa.Boolean, nullable=False, default=False),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("retries", sa.Integer, nullable=False, default=0),
    # The directory on the worker it runs in; NULL: a private temporary directory.
    sa.Column("workdir", sa.Text),
    # The job's own notification rules: [{"on": [states], "target": target id}]; NULL: none.
    sa.Column("notify", sa.JSON),
    # Secrets (jobbalancer/vault.py) by name, never their values: {ENV_NAME: secret name}
    # and {"<index in params>": secret name}; the worker resolves them at the start. NULL: none.
    sa.Column("secret_env", sa.JSON),
    sa.Column("secret_args", sa.JSON),
    sa.Column("attempt", sa.Integer, nullable=False, default=1),
    sa.Column("retry_of", sa.Integer),
    sa.Column("restarted_from", sa.Integer),
    sa.Column("user_id", sa.Integer),
    sa.Column("user_name", Name),
    sa.Column("worker_id", sa.Integer),
    # Fencing: a fresh token per assignment; the worker must present it to report.
    sa.Column("token", sa.String(32)),
    sa.Column("pid", sa.Integer),
    sa.Column("exit_code", sa.Integer),
    sa.Column("signal", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("kill_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("output_bytes", sa.BigInteger, nullable=False, default=0),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("assigned_at", UTCDateTime),
    sa.Column("started_at", UTCDateTime),
    sa.Column("finished_at", UTCDateTime),
    # The schedule that fired it (its retries keep it); NULL: submitted by hand.
    sa.Column("schedule_id", sa.Integer),
    # Starting later (docs/api.md, "Starting later, retrying later"): the job is not run
    # before ``not_before`` (a ``delayed`` job until then). The retry policy is copied to
    # retries and restarts; NULL: the default (at once; failed and lost ends retried).
    sa.Column("not_before", UTCDateTime),
    sa.Column("retry_delay", sa.Double),
    sa.Column("retry_backoff", sa.Double),
    sa.Column("retry_max_delay", sa.Double),
    sa.Column("retry_jitter", sa.Double),
    sa.Column("retry_on", sa.JSON),
    # Placement: what the job requests (NULL: nothing of that; it needs one slot) and its
    # constraints on worker labels ({"ffmpeg": "6", "ssd": true}; NULL: none). Why a
    # waiting job still waits, written by the balancer's pass when it changes.
    sa.Column("cpus", sa.Double),
    sa.Column("memory", sa.BigInteger),
    sa.Column("gpus", sa.Integer),
    sa.Column("constraints", sa.JSON),
    sa.Column("pending_reason", sa.String(300)),
    # A worker's pick-up and the balancer's slot count.
    sa.Index(None, "worker_id", "state"),
    sa.Index(None, "user_id", "id"),
    sa.Index(None, "finished_at"),
    # A job's page lists the jobs restarted from it.
    sa.Index(None, "restarted_from"),
    # A chain follows a failed parent to its retry (jobbalancer.chains).
    sa.Index(None, "retry_of"),
    # The job list by state, newest first: without it SQLite sorts every job of the state.
    sa.Index(None, "state", "id"),
    # A schedule's jobs not yet ended (its overlap policy), and the list's schedule filter.
    sa.Index(None, "schedule_id", "state"),
    # The leader's release of delayed jobs that are due, and its next wake-up (the
    # earliest due one): both read only the delayed jobs' head of this index.
    sa.Index(None, "state", "not_before"),
    sqlite_autoincrement=True,  # ids are never reused (above)
)

# The queue: waiting jobs of a class, highest priority first, then oldest; priority
# descending, so the queue's order is the index's (no sort of the whole queue per pick-up).
sa.Index("ix_jobs_queue", jobs.c.state, jobs.c.worker_class_id, jobs.c.priority.desc(), jobs.c.id)

# Chains: a job held until other jobs end (docs/api.md, "Dependencies"). ``parent_id`` is
# the parent's latest attempt: a retry takes over its rows. ``met`` turns true when that
# parent ended for good as ``on_end`` wanted; a held child is released when all its rows
# are met. Rows live as long as the child (the parent may be deleted before it).
job_dependencies = sa.Table(
    "job_dependencies",
    metadata,
    sa.Column("child_id", sa.Integer, primary_key=True),
    sa.Column("parent_id", sa.Integer, primary_key=True),
    # success | failure | any
    sa.Column("on_end", sa.String(8), nullable=False),
    sa.Column("met", sa.Boolean, nullable=False, default=False),
    sa.Index(None, "parent_id"),
)

job_output = sa.Table(
    "job_output",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("job_id", sa.Integer, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("stream", sa.String(6), nullable=False),
    # Byte offsets of this chunk in the job's whole output and in its own stream, so a
    # reader can resume at any offset of either view without summing earlier chunks.
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("stream_offset", sa.BigInteger, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("data", Bytes, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("job_id", "seq"),
)

settings = sa.Table(
    "settings",
    metadata,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.JSON),
)

# Named locks: the balancer's mutual exclusion (a row lock) and leader leases.
locks = sa.Table(
    "locks",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("holder", sa.String(100)),
    sa.Column("expires_at", UTCDateTime),
)

# -- notifications (issue 13) -------------------------------------------------------------

# Where notifications go: an admin's named webhook, Slack-compatible webhook or mail
# recipients. ``secret`` signs webhook bodies and is never shown again once written. The
# counters are the Prometheus figures per target, the same whichever server is scraped.
notification_targets = sa.Table(
    "notification_targets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", Name, nullable=False, unique=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("url", sa.Text),
    sa.Column("secret", sa.Text),
    sa.Column("recipients", sa.JSON),
    sa.Column("delivered", sa.BigInteger, nullable=False, default=0),
    sa.Column("failures", sa.BigInteger, nullable=False, default=0),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sqlite_autoincrement=True,  # ids are never reused (above)
)

# Rules made by admins: jobs of a worker class (NULL: every job) ending in one of the
# states ``on`` (",failed,timeout,": matched with LIKE on every backend) notify a target.
# A job's own rules are on the job (``jobs.notify``).
notification_rules = sa.Table(
    "notification_rules",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("worker_class_id", sa.Integer),
    sa.Column("on", sa.String(200), nullable=False),
    sa.Column("target_id", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sqlite_autoincrement=True,
)

# The outbox: one row per notification, written in the transaction that moved the job.
# The leader delivers it (``lease_until`` keeps two servers from sending one at once) and
# retries with backoff until ``delivered`` or, after a day, ``failed``. ``key`` is the
# idempotency key, the same on every retry.
notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("job_id", sa.Integer, nullable=False),
    sa.Column("target_id", sa.Integer, nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("key", sa.String(64), nullable=False, unique=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_at", UTCDateTime, nullable=False),
    sa.Column("lease_until", UTCDateTime),
    sa.Column("leased_by", sa.String(100)),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("delivered_at", UTCDateTime),
    # The leader's scan for due rows, a job's page, a target's recent deliveries.
    sa.Index(None, "state", "next_at"),
    sa.Index(None, "job_id"),
    sa.Index(None, "target_id", "id"),
    sqlite_autoincrement=True,
)

# -- job tallies for /metrics (issue 15) --------------------------------------------------

# Counters and histograms of jobs that started and ended, the same whichever server is
# scraped and kept across restarts: a scrape folds in the jobs that started or ended since
# the cursor (jobbalancer.tally), so the jobs' own moves write nothing more. ``name`` is
# the tally (ended, wait, run), ``label`` the state or the histogram bucket ("sum" for the
# sum of observations).
metric_counts = sa.Table(
    "metric_counts",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("worker_class", Name, primary_key=True),
    sa.Column("label", sa.String(32), primary_key=True),
    sa.Column("value", sa.Double, nullable=False),
)

# How far each fold got: the (time, job id) of the last job it counted, in the order of
# ``jobs.started_at`` (the "started" cursor) or ``jobs.finished_at`` ("ended"). ``at`` is
# NULL until the first fold, which starts the cursor there (jobs that ended before the
# first scrape are not counted).
metric_cursors = sa.Table(
    "metric_cursors",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("at", UTCDateTime),
    sa.Column("job_id", sa.Integer, nullable=False),
)

# The "started" cursor reads jobs in the order they started.
sa.Index("ix_jobs_started_at", jobs.c.started_at)
# -- schedules (issue 11) -----------------------------------------------------------------

# A schedule: a job body (as POST /api/v1/jobs takes it, stored as given and validated
# again at every firing with its owner's rights then), a cron expression read in an IANA
# zone, and its policies. ``next_fire_at`` is the next occurrence the leader has not
# decided yet (UTC); NULL while paused or once past ``end_at``. The leader's due query
# walks its index, so a tick costs the same with 10 or 10 000 schedules.
schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", Name, nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("job", sa.JSON, nullable=False),
    sa.Column("cron", sa.String(200), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    # allow | skip | queue | replace
    sa.Column("overlap", sa.String(8), nullable=False),
    # none | latest | all (up to catch_up_max)
    sa.Column("catch_up", sa.String(8), nullable=False),
    sa.Column("catch_up_max", sa.Integer, nullable=False, default=10),
    sa.Column("start_at", UTCDateTime),
    sa.Column("end_at", UTCDateTime),
    sa.Column("next_fire_at", UTCDateTime),
    sa.Column("user_id", sa.Integer, nullable=False),
    sa.Column("user_name", Name, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index(None, "next_fire_at"),
    sa.Index(None, "user_id"),
    sqlite_autoincrement=True,  # ids are never reused (above)
)

# What became of each occurrence: ``fired`` (its job) or ``skipped`` (why, in words and
# as a code for the metrics). The unique (schedule, time) row is written in the
# transaction that creates the job: an occurrence fires once, whichever server, however
# many times a crashed leader's successor looks at it. A run-now is an occurrence at the
# instant it was asked for (``manual``). ``late_ms``: how long after its time it fired.
schedule_occurrences = sa.Table(
    "schedule_occurrences",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("schedule_id", sa.Integer, nullable=False),
    sa.Column("fire_at", UTCDateTime, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Column("outcome", sa.String(8), nullable=False),
    sa.Column("job_id", sa.Integer),
    sa.Column("reason", sa.Text),
    sa.Column("reason_code", sa.String(16)),
    sa.Column("late_ms", sa.BigInteger, nullable=False, default=0),
    sa.Column("manual", sa.Boolean, nullable=False, default=False),
    sa.UniqueConstraint("schedule_id", "fire_at"),
    sqlite_autoincrement=True,
)

# The Prometheus counters of occurrences (fired, late, skipped:<reason code>), kept apart
# from the occurrences so that deleting a schedule does not make a counter go down.
schedule_counters = sa.Table(
    "schedule_counters",
    metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False, default=0),
)

# -- secrets (issue 14) --------------------------------------------------------------------

# Named secrets for jobs (jobbalancer/vault.py): ``value`` is AES-GCM ciphertext bound to the
# name (the key is never in the database), ``key_id`` names the key it was sealed with.
# ``worker_classes`` (names) and ``users`` (ids) limit who may use it; NULL: no limit.
secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", Name, nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("worker_classes", sa.JSON),
    sa.Column("users", sa.JSON),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("created_by", Name),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("updated_by", Name),
    sqlite_autoincrement=True,  # ids are never reused (above)
)

# -- audit log (issue 14) -----------------------------------------------------------------

# One row per change, written in the change's own transaction (jobbalancer/audit.py): who
# (``actor_id`` NULL for the local command line), how (``via``: "key jb_xxxxxxxx", "web",
# "cli"), from where, what (``action``: "job.kill"), on what, and a short summary that
# never holds a password, key, secret or env value. Retention: ``audit_retention_days``.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor_id", sa.Integer),
    sa.Column("actor_name", Name, nullable=False),
    sa.Column("via", sa.String(40), nullable=False),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("object_type", sa.String(40), nullable=False),
    sa.Column("object_id", sa.Integer),
    sa.Column("object_name", Name),
    sa.Column("count", sa.Integer),
    sa.Column("summary", LongText, nullable=False),
    sa.Index(None, "at"),
    sa.Index(None, "actor_name"),
    sa.Index(None, "action"),
    sa.Index(None, "object_type", "object_id"),
    sqlite_autoincrement=True,
)
