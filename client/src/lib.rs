//! Rust client for HopeFlow Realtime.
//!
//! # Layout
//!
//! * [`socket`]: [`Client`], a socket with confirmed subscriptions, typed
//!   events, acks, pings and automatic reconnection.
//! * [`publisher`]: [`Publisher`], `POST /publish` with typed errors.
//! * [`token`]: minting and checking HS256 tokens for development and tests.
//! * [`tls`]: what `wss://` and `https://` trust (public roots, private CAs)
//!   and one-line connection errors.
//! * [`cli`]: argument helpers of the `hopeflow` command-line tool.
//!
//! Frames, envelopes and error codes are the server crate's own types
//! (`hopeflow_realtime::protocol`), built without the Workers runtime, so the
//! two sides cannot drift apart.
#![forbid(unsafe_code)]

pub mod cli;
pub mod publisher;
pub mod socket;
pub mod tls;
pub mod token;

pub use publisher::{ApiError, PublishError, PublishOutcome, Publisher};
pub use socket::{
    Client, ClientError, ClientOptions, CloseCode, Confirmation, Envelope, ErrorCode, Event,
    TokenPlacement,
};
pub use tls::{TlsError, Trust};
