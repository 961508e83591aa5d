//! Abuse limits: per user, a cap on open sockets; per socket, a token
//! bucket for unsolicited messages and a window counting protocol
//! violations. Time is passed in (milliseconds).
//!
//! Acks that answer a pending delivery are never limited: they are replies to
//! the server's own sends, and limiting them would fail legitimate publishes.

/// Messages a socket may send in a burst.
pub const MESSAGE_BURST: f64 = 100.0;
/// Sustained messages per second a socket may send.
pub const MESSAGES_PER_SEC: f64 = 50.0;
/// Violations (bad frames, rate-limited messages) tolerated per window...
pub const MAX_VIOLATIONS: u32 = 20;
/// ...of this many milliseconds; one more closes the socket with 1008.
pub const VIOLATION_WINDOW_MS: f64 = 60_000.0;

/// `MAX_SOCKETS_PER_USER`: the most sockets one user's object holds. One
/// client in a reconnect loop, or one `userId` shared by a fleet, would
/// otherwise open sockets up to the platform's cap on hibernatable sockets
/// per object, which every other socket of the user then shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketCap(pub usize);

impl SocketCap {
    pub const DEFAULT: u64 = 1_000;
    /// Cloudflare's limit of hibernatable WebSockets per Durable Object.
    pub const PLATFORM_MAX: u64 = 32_768;

    /// Whether a user with `open` sockets may open one more: refused when
    /// that one would be past the cap. The count is the object's own
    /// (its socket index), so it holds across hibernation.
    pub fn admit(self, open: usize) -> Result<(), TooManySockets> {
        if open < self.0 {
            Ok(())
        } else {
            Err(TooManySockets { max: self.0 })
        }
    }
}

impl Default for SocketCap {
    fn default() -> SocketCap {
        SocketCap(SocketCap::DEFAULT as usize)
    }
}

/// An upgrade refused: the user already has `max` sockets open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManySockets {
    pub max: usize,
}

impl std::fmt::Display for TooManySockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this user already has {} open sockets, the most allowed (MAX_SOCKETS_PER_USER); \
             retry once one of them has closed",
            self.max
        )
    }
}

impl std::error::Error for TooManySockets {}

/// What to do after a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answer with an error frame; the socket stays open.
    Warn,
    /// Too many violations: close with 1008.
    Close,
}

/// One socket's limiter state (in memory; a socket that is sending is not
/// hibernating, so nothing is lost when the object sleeps).
#[derive(Debug, Clone, PartialEq)]
pub struct SocketLimits {
    tokens: f64,
    refilled_at_ms: f64,
    violations: u32,
    window_start_ms: f64,
}

impl SocketLimits {
    pub fn new(now_ms: f64) -> SocketLimits {
        SocketLimits {
            tokens: MESSAGE_BURST,
            refilled_at_ms: now_ms,
            violations: 0,
            window_start_ms: now_ms,
        }
    }

    /// Takes one message from the bucket; `false` means rate limited.
    pub fn take_message(&mut self, now_ms: f64) -> bool {
        let elapsed_secs = ((now_ms - self.refilled_at_ms) / 1000.0).max(0.0);
        self.tokens = (self.tokens + elapsed_secs * MESSAGES_PER_SEC).min(MESSAGE_BURST);
        self.refilled_at_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Records a violation and says whether the socket may stay.
    pub fn violation(&mut self, now_ms: f64) -> Verdict {
        if now_ms - self.window_start_ms >= VIOLATION_WINDOW_MS {
            self.window_start_ms = now_ms;
            self.violations = 0;
        }
        self.violations += 1;
        if self.violations > MAX_VIOLATIONS {
            Verdict::Close
        } else {
            Verdict::Warn
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_cap_refuses_the_one_past_it() {
        let cap = SocketCap(2);
        assert_eq!(cap.admit(0), Ok(()));
        assert_eq!(cap.admit(1), Ok(()));
        assert_eq!(cap.admit(2), Err(TooManySockets { max: 2 }));
        // Past it (admitting never gets there): refused all the same.
        assert_eq!(cap.admit(5), Err(TooManySockets { max: 2 }));
        // One closed: the next is accepted again.
        assert_eq!(cap.admit(1), Ok(()));
        let one = SocketCap(1);
        assert_eq!(one.admit(0), Ok(()));
        assert!(one.admit(1).is_err());
        let default = SocketCap::default();
        assert_eq!(default.admit(999), Ok(()));
        assert!(default.admit(1_000).is_err());
        let refusal = TooManySockets { max: 2 }.to_string();
        assert!(refusal.contains("2 open sockets"), "{refusal}");
        assert!(refusal.contains("MAX_SOCKETS_PER_USER"), "{refusal}");
    }

    #[test]
    fn burst_then_refill() {
        let mut limits = SocketLimits::new(0.0);
        for _ in 0..MESSAGE_BURST as usize {
            assert!(limits.take_message(0.0));
        }
        assert!(!limits.take_message(0.0));
        // 100 ms refill 5 messages at 50/s.
        for _ in 0..5 {
            assert!(limits.take_message(100.0));
        }
        assert!(!limits.take_message(100.0));
        // The bucket never holds more than the burst.
        let mut limits = SocketLimits::new(0.0);
        for _ in 0..MESSAGE_BURST as usize {
            assert!(limits.take_message(3_600_000.0));
        }
        assert!(!limits.take_message(3_600_000.0));
    }

    #[test]
    fn clock_going_backwards_does_not_mint_tokens() {
        let mut limits = SocketLimits::new(1_000.0);
        for _ in 0..MESSAGE_BURST as usize {
            assert!(limits.take_message(1_000.0));
        }
        assert!(!limits.take_message(0.0));
    }

    #[test]
    fn violations_close_after_the_limit_within_a_window() {
        let mut limits = SocketLimits::new(0.0);
        for _ in 0..MAX_VIOLATIONS {
            assert_eq!(limits.violation(10.0), Verdict::Warn);
        }
        assert_eq!(limits.violation(20.0), Verdict::Close);
        // A new window starts over.
        let mut limits = SocketLimits::new(0.0);
        for _ in 0..MAX_VIOLATIONS {
            limits.violation(0.0);
        }
        assert_eq!(limits.violation(VIOLATION_WINDOW_MS), Verdict::Warn);
    }
}
