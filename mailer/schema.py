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
    # 5: scoring, grading, lifecycle stages, the API and webhooks (mailer.sqlitescoring).
    # Triggers queue a lead for re-scoring whenever something it is scored or graded on is
    # written, so every writer, present and future, re-scores without knowing about scoring.
    # Each touch draws a new random stamp; the engine deletes only the (lead, stamp) pairs it
    # read, so a touch while a batch is being scored leaves the lead queued for the next one.
    # The type list is mailer.scoremodel.SCORED_ROW_TYPES as of this version (a later change
    # to it needs a migration that recreates the trigger; tests/test_sqlitescoring.py checks).
    # Leads already stored are queued once, so an upgraded database gets scored.
    """
    ALTER TABLE leads ADD COLUMN score INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE leads ADD COLUMN product_score INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE leads ADD COLUMN grade TEXT NOT NULL DEFAULT '';
    ALTER TABLE leads ADD COLUMN stage_since INTEGER;
    ALTER TABLE leads ADD COLUMN last_engaged_at INTEGER;
    ALTER TABLE leads ADD COLUMN account TEXT;
    CREATE INDEX leads_stage ON leads (stage);
    CREATE INDEX leads_account ON leads (account, score);
    CREATE TABLE accounts (
        account TEXT PRIMARY KEY,
        score INTEGER NOT NULL DEFAULT 0,
        stage TEXT NOT NULL DEFAULT '',
        stage_since INTEGER,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE scoring_queue (
        lead_id INTEGER PRIMARY KEY,
        stamp INTEGER NOT NULL
    );
    INSERT INTO scoring_queue (lead_id, stamp) SELECT id, random() FROM leads;
    CREATE TRIGGER scoring_event_added AFTER INSERT ON events
    WHEN NEW.lead_id IS NOT NULL AND NEW.machine = 0 AND NEW.type IN (
        'opened', 'clicked', 'subscribed', 'confirmed', 'unsubscribed', 'bounce', 'failed', 'complained',
        'form_submitted', 'page_visit', 'product_event')
    BEGIN
        INSERT INTO scoring_queue (lead_id, stamp) VALUES (NEW.lead_id, random())
        ON CONFLICT (lead_id) DO UPDATE SET stamp = excluded.stamp;
    END;
    CREATE TRIGGER scoring_event_rejudged AFTER UPDATE OF machine ON events
    WHEN NEW.lead_id IS NOT NULL AND NEW.machine IS NOT OLD.machine AND NEW.type IN (
        'opened', 'clicked', 'subscribed', 'confirmed', 'unsubscribed', 'bounce', 'failed', 'complained',
        'form_submitted', 'page_visit', 'product_event')
    BEGIN
        INSERT INTO scoring_queue (lead_id, stamp) VALUES (NEW.lead_id, random())
        ON CONFLICT (lead_id) DO UPDATE SET stamp = excluded.stamp;
    END;
    CREATE TRIGGER scoring_lead_added AFTER INSERT ON leads
    BEGIN
        INSERT INTO scoring_queue (lead_id, stamp) VALUES (NEW.id, random())
        ON CONFLICT (lead_id) DO UPDATE SET stamp = excluded.stamp;
    END;
    CREATE TRIGGER scoring_profile_changed
    AFTER UPDATE OF first_name, last_name, company, job_title, source, attributes ON leads
    WHEN NEW.first_name IS NOT OLD.first_name OR NEW.last_name IS NOT OLD.last_name
        OR NEW.company IS NOT OLD.company OR NEW.job_title IS NOT OLD.job_title
        OR NEW.source IS NOT OLD.source OR NEW.attributes IS NOT OLD.attributes
    BEGIN
        INSERT INTO scoring_queue (lead_id, stamp) VALUES (NEW.id, random())
        ON CONFLICT (lead_id) DO UPDATE SET stamp = excluded.stamp;
    END;
    CREATE TABLE event_keys (
        key TEXT PRIMARY KEY,
        event_id INTEGER NOT NULL REFERENCES events(id)
    ) WITHOUT ROWID;
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        hash BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER,
        last_used_at INTEGER
    );
    CREATE TABLE webhook_deliveries (
        id INTEGER PRIMARY KEY,
        webhook TEXT NOT NULL,
        event_type TEXT NOT NULL,
        event_id TEXT NOT NULL,
        body BLOB NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER,
        last_status INTEGER,
        last_error TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (webhook, event_id)
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
    CREATE TABLE webhook_attempts (
        id INTEGER PRIMARY KEY,
        delivery_id INTEGER NOT NULL REFERENCES webhook_deliveries(id),
        at INTEGER NOT NULL,
        status INTEGER,
        error TEXT NOT NULL DEFAULT '',
        duration_ms INTEGER NOT NULL
    );
    CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id);
    """,
    # 6: leases that name their owner (mailer.daemons). Every running daemon has a row in
    # `daemons` and heartbeats there (real time); a claim writes its owner on the message, and
    # recovery requeues only the messages of owners that are gone. Messages a daemon from
    # before this version left in `sending` get an owner that never registers, so the next
    # start recovers them at once, as it did before. The partial index holds only the leased
    # rows, so recovery never reads the whole queue.
    """
    ALTER TABLE messages ADD COLUMN lease_owner TEXT;
    UPDATE messages SET lease_owner = 'before schema 6' WHERE state = 'sending';
    CREATE INDEX messages_leased ON messages (lease_owner) WHERE state = 'sending';
    CREATE TABLE daemons (
        owner TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        host TEXT NOT NULL,
        pid_scope TEXT NOT NULL DEFAULT '',
        started_at INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 7: when a message was first attempted (an SMTP attempt, not a hold), from which RFC 5321
    # 4.5.4.1's give-up time counts: days spent waiting for warm-up budget no longer use it up.
    # Messages attempted before this version keep the old reading (their creation).
    """
    ALTER TABLE messages ADD COLUMN first_attempt_at INTEGER;
    UPDATE messages SET first_attempt_at = created_at WHERE attempts > 0;
    """,
    # 8: a returned message is stored once per recipient (mailer.bouncing.evidence_key): a
    # maildir ingested every day, or a bounce an MTA sends again, no longer counts again.
    # Rows from before have no key (SQLite cannot hash); the intake finds those by their
    # evidence bytes instead and gives them the key then.
    """
    ALTER TABLE bounces ADD COLUMN evidence_key TEXT;
    CREATE UNIQUE INDEX bounces_evidence ON bounces (evidence_key) WHERE evidence_key IS NOT NULL;
    """,
)
