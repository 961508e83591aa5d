//! The ids the edge makes: random UUIDs (v4), from the runtime's
//! `crypto.getRandomValues`.

/// A publish's `envelopeId`: the same for every socket and user it reaches.
pub fn envelope_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A socket's id, and a history's epoch: 32 hex digits.
pub fn compact_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
