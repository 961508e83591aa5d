//! The isolate's settings, shared by the worker and the objects: read from
//! the environment once, with the token verifier built from them.

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use wasm_bindgen::JsValue;
use worker::{js_sys, Env};

use crate::domain::auth::{AuthError, Claims, RefreshRefusal, TokenVerifier, VerifiedTokens};
use crate::domain::config::{Config, ConfigError};
use crate::domain::error::ApiError;
use crate::runtime::telemetry::{self, Telemetry};

/// The settings from the environment (vars and secrets alike are strings),
/// read straight off the `env` object: `Env::var` formats each value
/// through `Display`, which was a sixth of the first publish's busy time
/// in the profile (bench/README.md, "Cold start").
fn read_config(env: &Env) -> std::result::Result<Config, ConfigError> {
    Config::load(|name| {
        js_sys::Reflect::get(env.as_ref(), &JsValue::from_str(name))
            .ok()
            .and_then(|value| value.as_string())
    })
}

/// The settings and the token verifier built from them.
pub struct Settings {
    pub config: Config,
    /// Where the log lines and data points go.
    pub telemetry: Telemetry,
    verifier: TokenVerifier,
    /// Tokens `verifier` has already checked the signature of.
    seen: RefCell<VerifiedTokens>,
}

thread_local! {
    /// Built by an isolate's first request and then kept: an isolate's vars
    /// and secrets never change (a deploy or a `wrangler dev` reload starts a
    /// new isolate). Reading a dozen vars through `env` and building the
    /// verifier on every request showed up in the profile (bench/README.md).
    static SETTINGS: OnceCell<Rc<Settings>> = const { OnceCell::new() };
}

/// The settings, shared by the worker and the objects of the isolate; an
/// invalid one refuses the request (and says why in the log, on every
/// request, since errors are not kept).
pub fn settings(env: &Env) -> std::result::Result<Rc<Settings>, ApiError> {
    match SETTINGS.with(|cell| cell.get().cloned()) {
        Some(settings) => Ok(settings),
        None => build_settings(env),
    }
}

/// Logs `event` by the isolate's settings, for a part that holds none of
/// its own (none built yet: nothing is written).
pub fn log(event: &crate::domain::logs::Event) {
    if let Some(settings) = shared() {
        settings.telemetry.log(event);
    }
}

/// The settings, once an earlier call of [`settings`] in this isolate
/// built them.
pub fn shared() -> Option<Rc<Settings>> {
    SETTINGS.with(|cell| cell.get().cloned())
}

impl Settings {
    /// Verifies a request's token at `now_secs`, remembering tokens whose
    /// signature held (see [`TokenVerifier::verify_cached`]).
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Claims, AuthError> {
        self.verifier
            .verify_cached(token, now_secs, &mut self.seen.borrow_mut())
    }

    /// A `refresh` frame's token for a socket of `user_id` (see
    /// [`TokenVerifier::verify_refresh`]); the new token's `exp`.
    pub fn verify_refresh(
        &self,
        token: Option<&str>,
        user_id: &str,
        now_secs: u64,
    ) -> std::result::Result<Option<u64>, RefreshRefusal> {
        self.verifier.verify_refresh(token, user_id, now_secs)
    }
}

/// The isolate's first request builds the settings. Out of line: inlined
/// into [`settings`], which every request calls, it made V8 recompile this
/// cold code with the hot path's optimizing tier (bench/README.md, row 22).
#[cold]
#[inline(never)]
fn build_settings(env: &Env) -> std::result::Result<Rc<Settings>, ApiError> {
    let config = read_config(env).map_err(|err| {
        telemetry::error("configuration", &err);
        ApiError::Misconfigured
    })?;
    let verifier = TokenVerifier::new(&config.secrets, &config.auth);
    let built = Rc::new(Settings {
        telemetry: Telemetry::new(&config.logs, env),
        config,
        verifier,
        seen: RefCell::new(VerifiedTokens::default()),
    });
    Ok(SETTINGS.with(|cell| cell.get_or_init(|| built).clone()))
}
