"""The SQLite schema, as migrations: entry i moves a database from version i to i + 1.

`PRAGMA user_version` holds the version; `SQLiteStore.open` applies the missing entries,
each in its own transaction, and refuses a database newer than this list.
"""

from __future__ import annotations

# Each entry moves the schema from version i to i + 1 (PRAGMA user_version).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE leads (
        id INTEGER PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        first_name TEXT NOT NULL DEFAULT '',
        last_name TEXT NOT NULL DEFAULT '',
        company TEXT NOT NULL DEFAULT '',
        job_title TEXT NOT NULL DEFAULT '',
        timezone TEXT,
        source TEXT,
        attributes TEXT NOT NULL DEFAULT '{}',
        stage TEXT NOT NULL DEFAULT 'lead',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE lists (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE list_members (
        list_id INTEGER NOT NULL REFERENCES lists(id),
        lead_id INTEGER NOT NULL REFERENCES leads(id),
        added_at INTEGER NOT NULL,
        PRIMARY KEY (list_id, lead_id)
    ) WITHOUT ROWID;
    CREATE TABLE enrollments (
        id INTEGER PRIMARY KEY,
        scenario TEXT NOT NULL,
        lead_id INTEGER NOT NULL REFERENCES leads(id),
        cycle INTEGER NOT NULL,
        state TEXT NOT NULL,
        step_index INTEGER NOT NULL,
        due_at INTEGER,
        entered_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (scenario, lead_id, cycle)
    );
    CREATE INDEX enrollments_due ON enrollments (due_at) WHERE state = 'active';
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL UNIQUE,
        enrollment_id INTEGER REFERENCES enrollments(id),
        lead_id INTEGER NOT NULL REFERENCES leads(id),
        scenario TEXT NOT NULL,
        step_id TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER,
        lease_until INTEGER,
        last_code INTEGER,
        last_enhanced TEXT,
        last_text TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (enrollment_id, step_id)
    );
    CREATE INDEX messages_due ON messages (next_attempt_at) WHERE state IN ('queued', 'deferred');
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        type TEXT NOT NULL,
        lead_id INTEGER REFERENCES leads(id),
        message_id INTEGER REFERENCES messages(id),
        scenario TEXT,
        step_id TEXT,
        machine INTEGER NOT NULL DEFAULT 0,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_lead ON events (lead_id, at);
    CREATE INDEX events_message ON events (message_id, type);
    CREATE TABLE suppressions (
        email TEXT NOT NULL,
        list TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL,
        PRIMARY KEY (email, list)
    ) WITHOUT ROWID;
    """,
    # 2: bounces with their evidence, and which bounce a suppression came from
    """
    CREATE TABLE bounces (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        source TEXT NOT NULL,
        email TEXT NOT NULL,
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        bounce_class TEXT NOT NULL,
        action TEXT NOT NULL,
        status TEXT,
        reply_code INTEGER,
        diagnostic TEXT NOT NULL DEFAULT '',
        rule TEXT NOT NULL DEFAULT '',
        remote_host TEXT NOT NULL DEFAULT '',
        message_id INTEGER REFERENCES messages(id),
        lead_id INTEGER REFERENCES leads(id),
        evidence BLOB NOT NULL DEFAULT x'',
        suppression TEXT,
        undone_at INTEGER
    );
    CREATE INDEX bounces_email ON bounces (email, at);
    ALTER TABLE suppressions ADD COLUMN bounce_id INTEGER REFERENCES bounces(id);
    """,
    # 3: consent. A list member is pending until it confirms (double opt-in); members from
    # before are confirmed. Every consent change is kept as evidence. The report's index
    # covers its queries, so reading it never touches the events' rows.
    """
    ALTER TABLE list_members ADD COLUMN status TEXT NOT NULL DEFAULT 'confirmed'
        CHECK (status IN ('pending', 'confirmed'));
    CREATE TABLE consents (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        email TEXT NOT NULL,
        lead_id INTEGER REFERENCES leads(id),
        list TEXT NOT NULL DEFAULT '',
        action TEXT NOT NULL,
        method TEXT NOT NULL,
        ip TEXT NOT NULL DEFAULT '',
        user_agent TEXT NOT NULL DEFAULT '',
        text TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL DEFAULT '',
        message_id INTEGER REFERENCES messages(id)
    );
    CREATE INDEX consents_email ON consents (email, at);
    CREATE INDEX events_report ON events (scenario, step_id, type, machine, message_id);
    """,
    # 4: warm-up. Attempts per sending IP, receiving provider and UTC hour, so a restart
    # does not reset a day's use; and each (IP, provider)'s throttle (mailer.throttle).
    """
    CREATE TABLE warmup_usage (
        ip TEXT NOT NULL,
        provider TEXT NOT NULL,
        day TEXT NOT NULL,
        hour INTEGER NOT NULL CHECK (hour BETWEEN 0 AND 23),
        attempts INTEGER NOT NULL DEFAULT 0,
        accepted INTEGER NOT NULL DEFAULT 0,
        deferred INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (day, ip, provider, hour)
    ) WITHOUT ROWID;
    CREATE TABLE warmup_throttles (
        ip TEXT NOT NULL,
        provider TEXT NOT NULL,
        multiplier REAL NOT NULL,
        paused_until INTEGER,
        pause_seconds INTEGER NOT NULL DEFAULT 0,
        strikes INTEGER NOT NULL DEFAULT 0,
        last_strike INTEGER,
        clean_since INTEGER,
        clean_accepted INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '',
        changed_at INTEGER,
        PRIMARY KEY (ip, provider)
    ) WITHOUT ROWID;
    """,
)
