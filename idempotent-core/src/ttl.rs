//! How long a record is kept.

use std::time::Duration;

use crate::Error;

/// How long a record answers for its key; after that the key is free again.
///
/// At least one second and at most [`Ttl::MAX`] (366 days): a record that
/// outlives the clients that may retry only grows the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(Duration);

impl Ttl {
    /// The default, `"24h"`, as the IETF Idempotency-Key draft suggests.
    pub const DEFAULT: Ttl = Ttl(Duration::from_secs(24 * 60 * 60));
    /// The longest TTL accepted: 366 days.
    pub const MAX: Ttl = Ttl(Duration::from_secs(366 * 24 * 60 * 60));

    /// A TTL of `secs` seconds, clamped into `1s..=366d`.
    ///
    /// The `#[idempotent]` attribute checks its `ttl` at compile time and
    /// calls this with a value already in range.
    pub const fn from_secs(secs: u64) -> Ttl {
        let max = Ttl::MAX.0.as_secs();
        let secs = if secs == 0 {
            1
        } else if secs > max {
            max
        } else {
            secs
        };
        Ttl(Duration::from_secs(secs))
    }

    /// A TTL of `millis` milliseconds, clamped into `1s..=366d` like
    /// [`Ttl::from_secs`]. Records keep microseconds, so a TTL of
    /// `"1500ms"` expires 1.5 s after the call.
    ///
    /// The `#[idempotent]` attribute calls this for a `ttl` with a fraction
    /// of a second, such as `ttl = "1500ms"`.
    pub const fn from_millis(millis: u64) -> Ttl {
        let max = Ttl::MAX.0.as_secs() * 1000;
        let millis = if millis < 1000 {
            1000
        } else if millis > max {
            max
        } else {
            millis
        };
        Ttl(Duration::from_millis(millis))
    }

    /// Parses a humantime duration such as `"90s"`, `"15m"`, `"24h"`, `"7d"`
    /// or `"1h 30m"`.
    pub fn parse(text: &str) -> Result<Ttl, Error> {
        let invalid = |reason: String| Error::InvalidTtl {
            input: text.to_owned(),
            reason,
        };
        let d = humantime::parse_duration(text).map_err(|e| invalid(e.to_string()))?;
        Ttl::try_from(d).map_err(|e| match e {
            Error::InvalidTtl { reason, .. } => invalid(reason),
            other => other,
        })
    }

    /// The duration.
    pub const fn as_duration(self) -> Duration {
        self.0
    }
}

impl Default for Ttl {
    fn default() -> Self {
        Ttl::DEFAULT
    }
}

impl TryFrom<Duration> for Ttl {
    type Error = Error;

    fn try_from(d: Duration) -> Result<Ttl, Error> {
        let invalid = |reason: &str| Error::InvalidTtl {
            input: humantime::format_duration(d).to_string(),
            reason: reason.to_owned(),
        };
        if d < Duration::from_secs(1) {
            return Err(invalid("a ttl must be at least one second"));
        }
        if d > Ttl::MAX.0 {
            return Err(invalid(
                "a ttl must be at most 366 days; purge old records instead of keeping them forever",
            ));
        }
        Ok(Ttl(d))
    }
}

impl std::str::FromStr for Ttl {
    type Err = Error;

    fn from_str(s: &str) -> Result<Ttl, Error> {
        Ttl::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_humantime() {
        assert_eq!(Ttl::parse("24h").unwrap(), Ttl::DEFAULT);
        assert_eq!(Ttl::parse("1h 30m").unwrap().as_duration().as_secs(), 5400);
        assert!(matches!(Ttl::parse("0s"), Err(Error::InvalidTtl { .. })));
        assert!(matches!(
            Ttl::parse("400days"),
            Err(Error::InvalidTtl { .. })
        ));
        assert!(matches!(Ttl::parse("soon"), Err(Error::InvalidTtl { .. })));
    }

    #[test]
    fn from_secs_clamps() {
        assert_eq!(Ttl::from_secs(0).as_duration().as_secs(), 1);
        assert_eq!(Ttl::from_secs(u64::MAX), Ttl::MAX);
    }

    #[test]
    fn from_millis_keeps_fractions_and_clamps() {
        assert_eq!(
            Ttl::from_millis(1500).as_duration(),
            Duration::from_millis(1500)
        );
        assert_eq!(Ttl::from_millis(3000), Ttl::from_secs(3));
        assert_eq!(Ttl::from_millis(0), Ttl::from_secs(1));
        assert_eq!(Ttl::from_millis(999), Ttl::from_secs(1));
        assert_eq!(Ttl::from_millis(u64::MAX), Ttl::MAX);
        assert_eq!(
            Ttl::parse("1500ms").unwrap(),
            Ttl::from_millis(1500),
            "the runtime parser agrees"
        );
    }
}
