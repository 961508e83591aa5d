//! The object's SQLite tables, run with the rules of `idempotency` and
//! `history`: the answers of keyed publishes, and the user's history.

use worker::console_error;
use worker::worker_sys::DurableObjectState;

use crate::glue::{set_alarm, Bind, Sql};
use crate::history::{self, Position, Retention};
use crate::idempotency::{self, KeyedRequest, Stored};

/// The table of keyed answers (`idempotency`).
pub struct KeyStore {
    sql: Sql,
    /// The raw storage, for `setAlarm`.
    storage: worker::worker_sys::DurableObjectStorage,
    ttl_secs: u64,
}

impl KeyStore {
    pub fn open(state: &DurableObjectState, ttl_secs: u64) -> Option<KeyStore> {
        let storage = state.storage().ok()?;
        let sql = Sql::of(state)?;
        for statement in [idempotency::CREATE_TABLE, idempotency::CREATE_INDEX] {
            if let Err(err) = sql.exec(statement, &[]) {
                console_error!("idempotency table: {err}");
                return None;
            }
        }
        Some(KeyStore {
            sql,
            storage,
            ttl_secs,
        })
    }

    /// The unexpired answer stored under `key`.
    pub fn find(&self, key: &str, now_ms: f64) -> Option<Stored> {
        let binds = [Bind::Text(key), Bind::Number(now_ms.floor())];
        let rows = match self.sql.exec(idempotency::SELECT, &binds) {
            Ok(rows) => rows,
            Err(err) => {
                console_error!("idempotency lookup: {err}");
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

    pub fn save(&self, keyed: &KeyedRequest, envelope_id: &str, answer: &str, now_ms: f64) {
        let expires_at = idempotency::expires_at(now_ms, self.ttl_secs);
        let binds = [
            Bind::Text(&keyed.key),
            Bind::Text(&keyed.fingerprint),
            Bind::Text(envelope_id),
            Bind::Text(answer),
            Bind::Number(expires_at as f64),
        ];
        if let Err(err) = self.sql.exec(idempotency::INSERT, &binds) {
            console_error!("storing an idempotent answer: {err}");
        }
        self.schedule_cleanup();
    }

    /// Deletes expired keys; sets the alarm for the next expiry, if any.
    pub fn delete_expired(&self, now_ms: f64) {
        let binds = [Bind::Number(now_ms.floor())];
        if let Err(err) = self.sql.exec(idempotency::DELETE_EXPIRED, &binds) {
            console_error!("deleting expired idempotency keys: {err}");
        }
        self.schedule_cleanup();
    }

    /// The alarm fires at the oldest key's expiry (every key lives the same
    /// TTL, so that is the next one due).
    fn schedule_cleanup(&self) {
        let next = self
            .sql
            .exec(idempotency::NEXT_EXPIRY, &[])
            .ok()
            .and_then(|rows| rows.first().and_then(|row| row.number("next")));
        if let Some(at_ms) = next {
            set_alarm(&self.storage, at_ms);
        }
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
                let epoch = uuid::Uuid::new_v4().simple().to_string();
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
    /// sockets get (with its `seq`).
    pub fn record(&mut self, envelope_text: &str, now_ms: f64) -> Result<String, String> {
        let seq = self.position.seq + 1;
        let text = history::with_seq(envelope_text, seq);
        let binds = [
            Bind::Number(seq as f64),
            Bind::Text(&text),
            Bind::Number(now_ms.floor()),
        ];
        self.sql.exec(history::INSERT, &binds)?;
        self.position.seq = seq;
        if !history::trims_at(seq) {
            return Ok(text);
        }
        let trim = [
            Bind::Number(seq.saturating_sub(self.retention.size) as f64),
            Bind::Number(self.retention.cutoff_ms(now_ms).floor()),
            Bind::Number(seq as f64),
        ];
        // A failed trim keeps more rows until the next one; reads still
        // keep to the bounds.
        if let Err(err) = self.sql.exec(history::TRIM, &trim) {
            console_error!("trimming history: {err}");
        }
        Ok(text)
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
