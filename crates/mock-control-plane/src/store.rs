//! Durable state of the mock control plane in SQLite (a file, or memory).
//!
//! Every request reads and writes through here, so a restarted mock with the same
//! database file loses nothing: registration tokens (hashed), bootstrap tokens (hashed,
//! with the grace expiry of rotated ones), the job queue with lease state, acks, status
//! updates, results and events.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use vworkspace_protocol::{Event, Job, JobResult, StatusUpdate};

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// Milliseconds since the Unix epoch: every deadline in the database uses this unit.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Schema version kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

pub struct Store {
    conn: Mutex<Connection>,
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum JobState {
    /// Waiting to be handed out.
    Queued,
    /// Handed out, not acknowledged; handed out again when the lease ends.
    Leased,
    /// Acknowledged; never handed out again.
    Acked,
    /// A result is recorded.
    Done,
}

impl JobState {
    fn parse(s: &str) -> JobState {
        match s {
            "leased" => JobState::Leased,
            "acked" => JobState::Acked,
            "done" => JobState::Done,
            _ => JobState::Queued,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobInfo {
    pub id: String,
    pub cluster_id: String,
    pub state: JobState,
    /// Times the job was handed out by a poll.
    pub deliveries: i64,
    /// Result posts received, accepted or not (exactly-once checks).
    pub result_posts: i64,
    pub job: Job,
}

/// Outcome of consuming a registration token.
pub enum Registration {
    /// Valid; now used. Carries the bound cluster id.
    Accepted(String),
    /// Unknown, used or expired.
    Invalid,
    /// Valid but bound to another cluster than the one asked for; not consumed.
    ClusterMismatch,
}

/// Outcome of storing a result.
pub enum ResultWrite {
    Stored,
    AlreadyStored,
    UnknownJob,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS registration_tokens (
    hash TEXT PRIMARY KEY, cluster_id TEXT NOT NULL, expires_at_ms INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY, cluster_id TEXT NOT NULL, expires_at_ms INTEGER);
CREATE TABLE IF NOT EXISTS clusters (
    id TEXT PRIMARY KEY, rotations INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, cluster_id TEXT NOT NULL, body TEXT NOT NULL,
    state TEXT NOT NULL, lease_until_ms INTEGER NOT NULL DEFAULT 0,
    deliveries INTEGER NOT NULL DEFAULT 0, result_posts INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS status_updates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (job_id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, cluster_id TEXT NOT NULL, event_key TEXT,
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS events_key ON events(cluster_id, event_key)
    WHERE event_key IS NOT NULL;
";

impl Store {
    pub fn open(path: Option<&Path>) -> Result<Store> {
        let conn = match path {
            Some(p) => Connection::open(p).with_context(|| format!("opening {}", p.display()))?,
            None => Connection::open_in_memory()?,
        };
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let tables: i64 = conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )?;
        if tables > 0 && version != SCHEMA_VERSION {
            anyhow::bail!(
                "database schema version {version} is not {SCHEMA_VERSION} (written by another mock version); delete the file"
            );
        }
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| anyhow::anyhow!("store lock poisoned"))?;
        Ok(f(&conn)?)
    }

    /// Adds a registration token unless it is already known (a restart must not revive a
    /// used token).
    pub fn add_registration_token(&self, token: &str, cluster_id: &str, ttl_ms: i64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO registration_tokens(hash, cluster_id, expires_at_ms) VALUES (?1, ?2, ?3)",
                params![hash(token), cluster_id, now_ms().saturating_add(ttl_ms)],
            )?;
            c.execute("INSERT OR IGNORE INTO clusters(id) VALUES (?1)", params![cluster_id])?;
            Ok(())
        })
    }

    /// Consumes a registration token. When `want_cluster` is given and differs from the
    /// bound cluster, the token is left unused.
    pub fn consume_registration_token(
        &self,
        token: &str,
        want_cluster: Option<&str>,
    ) -> Result<Registration> {
        self.with(|c| {
            let row: Option<(String, i64, i64)> = c
                .query_row(
                    "SELECT cluster_id, expires_at_ms, used FROM registration_tokens WHERE hash = ?1",
                    params![hash(token)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            match row {
                Some((cluster, expires, 0)) if expires > now_ms() => {
                    if want_cluster.is_some_and(|w| w != cluster) {
                        return Ok(Registration::ClusterMismatch);
                    }
                    c.execute(
                        "UPDATE registration_tokens SET used = 1 WHERE hash = ?1",
                        params![hash(token)],
                    )?;
                    Ok(Registration::Accepted(cluster))
                }
                _ => Ok(Registration::Invalid),
            }
        })
    }

    pub fn add_token(&self, token: &str, cluster_id: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO tokens(hash, cluster_id, expires_at_ms) VALUES (?1, ?2, NULL)",
                params![hash(token), cluster_id],
            )?;
            c.execute(
                "INSERT OR IGNORE INTO clusters(id) VALUES (?1)",
                params![cluster_id],
            )?;
            Ok(())
        })
    }

    /// The cluster a bootstrap token belongs to, if it is valid now.
    pub fn cluster_for_token(&self, token: &str) -> Result<Option<String>> {
        self.with(|c| {
            c.query_row(
                "SELECT cluster_id FROM tokens WHERE hash = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?2)",
                params![hash(token), now_ms()],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Issues a new token for the cluster; every older token stays valid for `grace_ms`
    /// (0: invalid at once).
    pub fn rotate(&self, cluster_id: &str, new_token: &str, grace_ms: i64) -> Result<()> {
        self.with(|c| {
            let until = now_ms().saturating_add(grace_ms);
            if grace_ms <= 0 {
                c.execute("DELETE FROM tokens WHERE cluster_id = ?1", params![cluster_id])?;
            } else {
                c.execute(
                    "UPDATE tokens SET expires_at_ms = ?2 WHERE cluster_id = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?2)",
                    params![cluster_id, until],
                )?;
            }
            c.execute(
                "INSERT OR REPLACE INTO tokens(hash, cluster_id, expires_at_ms) VALUES (?1, ?2, NULL)",
                params![hash(new_token), cluster_id],
            )?;
            c.execute(
                "UPDATE clusters SET rotations = rotations + 1 WHERE id = ?1",
                params![cluster_id],
            )?;
            Ok(())
        })
    }

    pub fn revoke(&self, cluster_id: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM tokens WHERE cluster_id = ?1",
                params![cluster_id],
            )?;
            Ok(())
        })
    }

    pub fn enqueue(&self, cluster_id: &str, job: &Job) -> Result<()> {
        let body = serde_json::to_string(job)?;
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO jobs(id, seq, cluster_id, body, state) VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?2, ?3, 'queued')",
                params![job.id, cluster_id, body],
            )?;
            Ok(())
        })
    }

    /// Hands out every deliverable job of the cluster (queued, or leased with the lease
    /// over) and leases them for `lease_ms`.
    pub fn take_jobs(&self, cluster_id: &str, lease_ms: i64) -> Result<Vec<Job>> {
        let now = now_ms();
        let bodies: Vec<(String, String)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, body FROM jobs WHERE cluster_id = ?1 AND (state = 'queued' OR (state = 'leased' AND lease_until_ms <= ?2)) ORDER BY seq",
            )?;
            let rows = stmt
                .query_map(params![cluster_id, now], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (id, _) in &rows {
                c.execute(
                    "UPDATE jobs SET state = 'leased', lease_until_ms = ?2, deliveries = deliveries + 1 WHERE id = ?1",
                    params![id, now.saturating_add(lease_ms)],
                )?;
            }
            Ok(rows)
        })?;
        bodies
            .into_iter()
            .map(|(_, b)| Ok(serde_json::from_str(&b)?))
            .collect()
    }

    /// When the earliest running lease of the cluster ends (ms since the epoch).
    pub fn next_lease_end(&self, cluster_id: &str) -> Result<Option<i64>> {
        self.with(|c| {
            c.query_row(
                "SELECT MIN(lease_until_ms) FROM jobs WHERE cluster_id = ?1 AND state = 'leased'",
                params![cluster_id],
                |r| r.get(0),
            )
        })
    }

    pub fn job_state(&self, job_id: &str) -> Result<Option<(String, JobState)>> {
        self.with(|c| {
            c.query_row(
                "SELECT cluster_id, state FROM jobs WHERE id = ?1",
                params![job_id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        JobState::parse(&r.get::<_, String>(1)?),
                    ))
                },
            )
            .optional()
        })
    }

    pub fn ack(&self, job_id: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET state = 'acked' WHERE id = ?1 AND state IN ('queued', 'leased')",
                params![job_id],
            )?;
            Ok(())
        })
    }

    pub fn add_status(&self, job_id: &str, update: &StatusUpdate) -> Result<()> {
        let body = serde_json::to_string(update)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO status_updates(job_id, body) VALUES (?1, ?2)",
                params![job_id, body],
            )?;
            Ok(())
        })
    }

    pub fn store_result(&self, job_id: &str, result: &JobResult) -> Result<ResultWrite> {
        let body = serde_json::to_string(result)?;
        self.with(|c| {
            let known = c.execute(
                "UPDATE jobs SET result_posts = result_posts + 1 WHERE id = ?1",
                params![job_id],
            )?;
            if known == 0 {
                return Ok(ResultWrite::UnknownJob);
            }
            let inserted = c.execute(
                "INSERT OR IGNORE INTO results(job_id, body) VALUES (?1, ?2)",
                params![job_id, body],
            )?;
            if inserted == 0 {
                return Ok(ResultWrite::AlreadyStored);
            }
            c.execute(
                "UPDATE jobs SET state = 'done' WHERE id = ?1",
                params![job_id],
            )?;
            Ok(ResultWrite::Stored)
        })
    }

    pub fn result(&self, job_id: &str) -> Result<Option<JobResult>> {
        let body: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT body FROM results WHERE job_id = ?1",
                params![job_id],
                |r| r.get(0),
            )
            .optional()
        })?;
        body.map(|b| Ok(serde_json::from_str(&b)?)).transpose()
    }

    pub fn status_updates(&self, job_id: &str) -> Result<Vec<StatusUpdate>> {
        let bodies: Vec<String> = self.with(|c| {
            let mut stmt =
                c.prepare("SELECT body FROM status_updates WHERE job_id = ?1 ORDER BY seq")?;
            stmt.query_map(params![job_id], |r| r.get(0))?.collect()
        })?;
        bodies
            .into_iter()
            .map(|b| Ok(serde_json::from_str(&b)?))
            .collect()
    }

    pub fn jobs(&self, cluster_id: Option<&str>) -> Result<Vec<JobInfo>> {
        type Row = (String, String, String, String, i64, i64);
        let rows: Vec<Row> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, cluster_id, state, body, deliveries, result_posts FROM jobs WHERE ?1 IS NULL OR cluster_id = ?1 ORDER BY seq",
            )?;
            stmt.query_map(params![cluster_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?
            .collect()
        })?;
        rows.into_iter()
            .map(|(id, cluster_id, state, body, deliveries, result_posts)| {
                Ok(JobInfo {
                    id,
                    cluster_id,
                    state: JobState::parse(&state),
                    deliveries,
                    result_posts,
                    job: serde_json::from_str(&body)?,
                })
            })
            .collect()
    }

    /// Stores events, skipping keys this cluster has sent before. Returns how many were new.
    pub fn add_events(&self, cluster_id: &str, events: &[Event]) -> Result<usize> {
        let mut added = 0;
        for e in events {
            let key = Some(e.event_key.trim())
                .filter(|k| !k.is_empty())
                .map(String::from);
            let body = serde_json::to_string(e)?;
            added += self.with(|c| {
                c.execute(
                    "INSERT OR IGNORE INTO events(cluster_id, event_key, kind, namespace, name, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![cluster_id, key, e.kind, e.resource_ref.namespace, e.resource_ref.name, body],
                )
            })?;
        }
        Ok(added)
    }

    pub fn events(
        &self,
        cluster_id: &str,
        kind: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Event>> {
        let bodies: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT body FROM events WHERE cluster_id = ?1 AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR namespace = ?3) AND (?4 IS NULL OR name = ?4) ORDER BY seq",
            )?;
            stmt.query_map(params![cluster_id, kind, namespace, name], |r| r.get(0))?
                .collect()
        })?;
        bodies
            .into_iter()
            .map(|b| Ok(serde_json::from_str(&b)?))
            .collect()
    }

    pub fn reset(&self) -> Result<()> {
        self.with(|c| {
            c.execute_batch(
                "DELETE FROM jobs; DELETE FROM status_updates; DELETE FROM results; DELETE FROM events;",
            )
        })
    }
}
