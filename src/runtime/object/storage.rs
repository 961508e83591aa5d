//! The object's SQLite tables, run with the rules of `idempotency` and
//! `history`: the answers of keyed publishes, and the user's history. The
//! object's one alarm deletes what expired in both ([`cleanup`]); what
//! stores a row says when that is due, and its owner asks the alarm.

use wasm_bindgen::JsValue;
use worker::worker_sys::DurableObjectState;

use crate::domain::history::{self, Position, Retention};
use crate::domain::idempotency::{self, KeyedRequest, Stored};
use crate::domain::operator::HistoryView;
use crate::runtime::js::storage::{Bind, Sql};
use crate::runtime::telemetry;

/// The table of keyed answers (`idempotency`).
pub struct KeyStore {
    sql: Sql,
    ttl_secs: u64,
}

impl KeyStore {
    pub fn open(state: &DurableObjectState, ttl_secs: u64) -> Option<KeyStore> {
        let sql = Sql::of(state)?;
        for statement in [idempotency::CREATE_TABLE, idempotency::CREATE_INDEX] {
            if let Err(err) = sql.exec(statement, &[]) {
                telemetry::error("idempotency.open", &err);
                return None;
            }
        }
        Some(KeyStore { sql, ttl_secs })
    }

    /// The unexpired answer stored under `key`.
    pub fn find(&self, key: &str, now_ms: f64) -> Option<Stored> {
        let binds = [Bind::Text(key), Bind::Number(now_ms.floor())];
        let rows = match self.sql.exec(idempotency::SELECT, &binds) {
            Ok(rows) => rows,
            Err(err) => {
                telemetry::error("idempotency.find", &err);
                return None;
            }
        };
        let row = rows.first()?;
        Some(Stored {
            fingerprint: row.text("fingerprint")?,
            envelope_id: row.text("envelope_id")?,
            answer: row.text("answer")?,
        })
    }

    /// Keeps the answer; when it expires (ms), for the alarm.
    pub fn save(&self, keyed: &KeyedRequest, envelope_id: &str, answer: &str, now_ms: f64) -> f64 {
        let expires_at = idempotency::expires_at(now_ms, self.ttl_secs);
        let binds = [
            Bind::Text(&keyed.key),
            Bind::Text(&keyed.fingerprint),
            Bind::Text(envelope_id),
            Bind::Text(answer),
            Bind::Number(expires_at as f64),
        ];
        if let Err(err) = self.sql.exec(idempotency::INSERT, &binds) {
            telemetry::error("idempotency.save", &err);
        }
        expires_at as f64
    }
}

/// The alarm's storage duty: deletes expired keys and history rows past
/// their bounds (in objects that never made a table too); when the next
/// expiry falls (see [`next_cleanup`]).
pub fn cleanup(state: &DurableObjectState, retention: Retention, now_ms: f64) -> Option<f64> {
    let sql = Sql::of(state)?;
    if has_table(&sql, idempotency::TABLE) {
        let binds = [Bind::Number(now_ms.floor())];
        if let Err(err) = sql.exec(idempotency::DELETE_EXPIRED, &binds) {
            telemetry::error("idempotency.cleanup", &err);
        }
    }
    if has_table(&sql, history::TABLE) {
        purge_history(&sql, retention, now_ms);
    }
    next_expiry(&sql, retention, now_ms)
}

/// When the storage next has something to delete: the earliest expiry
/// among idempotency keys (every key lives the same TTL, so the oldest is
/// next) and envelopes in history, but not sooner than
/// [`Retention::cleanup_at`] allows; `None` when neither table holds any.
pub fn next_cleanup(state: &DurableObjectState, retention: Retention, now_ms: f64) -> Option<f64> {
    next_expiry(&Sql::of(state)?, retention, now_ms)
}

fn next_expiry(sql: &Sql, retention: Retention, now_ms: f64) -> Option<f64> {
    // Each table is asked for only if it exists: a statement on a missing
    // table throws, and a JS exception costs more than this query (every
    // user's first publish has history and no key yet).
    let first_number = |table: &str, query: &str, column: &str| {
        if !has_table(sql, table) {
            return None;
        }
        sql.exec(query, &[])
            .ok()
            .and_then(|rows| rows.first().and_then(|row| row.number(column)))
    };
    let key = first_number(idempotency::TABLE, idempotency::NEXT_EXPIRY, "next");
    let envelope = first_number(history::TABLE, history::OLDEST_STORED, "at")
        .map(|at| retention.expires_at(at));
    let due = key.into_iter().chain(envelope).min_by(f64::total_cmp)?;
    Some(retention.cleanup_at(due, now_ms))
}

/// The user's history as stored, without opening it; `None` for a user
/// who never had one (no table).
pub fn history_view(state: &DurableObjectState) -> Result<Option<HistoryView>, String> {
    let sql = Sql::of(state).ok_or("no storage")?;
    if !has_table(&sql, history::TABLE) {
        return Ok(None);
    }
    let rows = sql.exec(history::STORED, &[])?;
    let row = rows.first();
    let number = |column| row.and_then(|row| row.number(column)).unwrap_or(0.0) as u64;
    Ok(Some(HistoryView {
        seq: number("seq"),
        stored_envelopes: number("stored"),
    }))
}

/// Whether the object has table `name` (the alarm and the operator's view
/// run also in objects that never made one).
fn has_table(sql: &Sql, name: &str) -> bool {
    const QUERY: &str = "SELECT 1 AS yes FROM sqlite_master WHERE type = 'table' AND name = ?";
    sql.exec(QUERY, &[Bind::Text(name)])
        .is_ok_and(|rows| !rows.is_empty())
}

/// Deletes history rows past their bounds (all of them with history off),
/// keeping the newest row's `seq` without its envelope once expired.
fn purge_history(sql: &Sql, retention: Retention, now_ms: f64) {
    let (keep, cutoff) = retention.purge_bounds(now_ms);
    let cutoff = Bind::Number(cutoff.floor());
    let purged = sql
        .exec(history::PURGE, &[Bind::Number(keep as f64), cutoff.clone()])
        .and_then(|_| sql.exec(history::BLANK_EXPIRED, &[cutoff]));
    if let Err(err) = purged {
        telemetry::error("history.cleanup", &err);
    }
}

/// The user's history (`history`): envelopes by `seq`, and the epoch.
pub struct History {
    sql: Sql,
    pub position: Position,
    retention: Retention,
}

/// A retained envelope's text (with its `seq`).
pub struct Retained {
    pub envelope: String,
}

impl History {
    /// Opens the tables, reads the epoch (making one for a new history) and
    /// the last `seq`.
    pub fn open(state: &DurableObjectState, retention: Retention) -> Result<History, String> {
        let sql = Sql::of(state).ok_or("no storage")?;
        sql.exec(history::CREATE_TABLE, &[])?;
        sql.exec(history::CREATE_META, &[])?;
        let stored = sql
            .exec(history::READ_META, &[Bind::Text(history::EPOCH_KEY)])?
            .first()
            .and_then(|row| row.text("v"));
        let epoch = match stored {
            Some(epoch) => epoch,
            None => {
                let epoch = crate::runtime::ids::compact_id();
                let binds = [Bind::Text(history::EPOCH_KEY), Bind::Text(&epoch)];
                sql.exec(history::WRITE_META, &binds)?;
                epoch
            }
        };
        let last = sql
            .exec(history::LAST_SEQ, &[])?
            .first()
            .and_then(|row| row.number("seq"))
            .unwrap_or(0.0);
        Ok(History {
            sql,
            position: Position {
                seq: last as u64,
                epoch,
            },
            retention,
        })
    }

    /// Gives the envelope the next `seq` and keeps it; returns the text
    /// sockets get (with its `seq`), as the one JS string that is both
    /// stored and sent, and when the alarm must delete it (ms).
    pub fn record(&mut self, envelope_text: &str, now_ms: f64) -> Result<(JsValue, f64), String> {
        let seq = self.position.seq + 1;
        let text = JsValue::from_str(&history::with_seq(envelope_text, seq));
        let binds = [
            Bind::Number(seq as f64),
            Bind::JsText(&text),
            Bind::Number(now_ms.floor()),
        ];
        self.sql.exec(history::INSERT, &binds)?;
        self.position.seq = seq;
        let expires = self.retention.expires_at(now_ms);
        let cleanup_at = self.retention.cleanup_at(expires, now_ms);
        if history::trims_at(seq) {
            // A failed trim keeps more rows until the next one; reads still
            // keep to the bounds.
            purge_history(&self.sql, self.retention, now_ms);
        }
        Ok((text, cleanup_at))
    }

    /// Retained, unexpired envelopes after `since`, oldest first, and the
    /// oldest `seq` still retained.
    pub fn since(&self, since: u64, now_ms: f64) -> Result<(Vec<Retained>, Option<u64>), String> {
        let cutoff = Bind::Number(self.retention.cutoff_ms(now_ms).floor());
        let oldest_kept = Bind::Number(self.retention.oldest_kept(self.position.seq) as f64);
        let rows = self.sql.exec(
            history::SINCE,
            &[
                Bind::Number(since as f64),
                oldest_kept.clone(),
                cutoff.clone(),
            ],
        )?;
        let retained = rows
            .iter()
            .filter_map(|row| row.text("envelope"))
            .map(|envelope| Retained { envelope })
            .collect();
        let oldest = self
            .sql
            .exec(history::OLDEST, &[oldest_kept, cutoff])?
            .first()
            .and_then(|row| row.number("oldest"))
            .map(|seq| seq as u64);
        Ok((retained, oldest))
    }
}
