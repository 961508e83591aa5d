//! Rust client for HopeFlow Realtime.
//!
//! # Layout
//!
//! * [`socket`]: [`Client`], a socket with confirmed subscriptions, typed
//!   events, acks, pings, and automatic reconnection that resumes from the
//!   user's history (each envelope once, in `seq` order; [`Event::Gap`]
//!   when the history could not cover a drop). With a [`TokenProvider`] it
//!   refreshes the socket's token before it expires ([`Event::Refreshed`]);
//!   a fixed token ends the client when it expires ([`Event::TokenExpired`]).
//! * [`publisher`]: [`Publisher`], publishing (one user or a batch,
//!   idempotency keys, per-socket detail) and the operator routes (list and
//!   disconnect a user's sockets), with typed errors.
//! * [`api`]: the HTTP answers as typed structs, [`IdempotencyKey`],
//!   [`PublishOptions`] and path encoding (pure).
//! * [`token`]: minting and checking HS256 tokens for development and tests.
//! * [`tls`]: what `wss://` and `https://` trust (public roots, private CAs)
//!   and one-line connection errors.
//! * [`webhook`]: receiving webhooks: [`webhook::verify`] checks a
//!   request's `HopeFlow-Signature` and returns its events;
//!   [`webhook::receiver`] is the local receiver of `hopeflow webhooks
//!   listen`.
//! * [`cli`]: argument helpers of the `hopeflow` command-line tool.
//!
//! Frames, envelopes, error and close codes are the server crate's own types
//! (`hopeflow_realtime::protocol`), built without the Workers runtime, and
//! so are its rules: which idempotency keys are valid
//! (`hopeflow_realtime::idempotency`), the default operator scope
//! (`hopeflow_realtime::config`), how a token is checked and reads its
//! scopes (`hopeflow_realtime::auth`), how a webhook request is signed and
//! verified (`hopeflow_realtime::webhook`). The two sides cannot drift apart.
//!
//! Every public error type implements [`std::error::Error`].
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod publisher;
pub mod socket;
pub mod tls;
pub mod token;
pub mod webhook;

pub use api::{
    ApiError, BatchOutcome, Delivery, DeliveryStatus, DisconnectOutcome, IdempotencyKey,
    InvalidIdempotencyKey, PublishOptions, PublishOutcome, SocketInfo, StoredHistory, UserOutcome,
    UserSockets, WebhookState,
};
pub use publisher::{PublishError, Publisher};
pub use socket::{
    Client, ClientError, ClientOptions, CloseCode, Confirmation, Envelope, ErrorCode, Event,
    FrameObserver, Position, ServerFrameText, TokenPlacement, TokenProvider,
};
pub use tls::{TlsError, Trust};
