//! The command-line flags of `examples/idempotent_load.rs` and
//! `examples/purge_while_serving.rs`: `--flag value` or `--flag=value`.
//!
//! Each program keeps its own `match` on the flag's name:
//!
//! ```text
//! let mut flags = Flags::new(args);
//! while let Some(flag) = flags.next_flag() {
//!     match flag.as_str() {
//!         "--records" => records = flags.value(&flag)?.parse()..,
//!         ..
//!     }
//! }
//! ```

use std::time::Duration;

/// The longest unit a duration flag takes.
#[derive(Clone, Copy, PartialEq, Eq)]
#[allow(dead_code, reason = "each program takes one of them")]
pub enum Longest {
    /// `ms`, `s` (or none) and `m`.
    Minutes,
    /// `h` as well.
    Hours,
}

/// A positive duration: a number (fractions allowed) and a unit, `ms`, `s`
/// (or none), `m`, and `h` when `longest` is [`Longest::Hours`].
pub fn parse_duration(text: &str, longest: Longest) -> Option<Duration> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => number / 1_000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" if longest == Longest::Hours => number * 3_600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
}

/// The arguments, read one flag at a time.
pub struct Flags<I> {
    args: I,
    /// The value given with `=` to the flag last read.
    inline: Option<String>,
}

impl<I: Iterator<Item = String>> Flags<I> {
    pub fn new(args: impl IntoIterator<IntoIter = I>) -> Self {
        Flags {
            args: args.into_iter(),
            inline: None,
        }
    }

    /// The next flag: `--flag` of `--flag=value` (whose value [`Flags::value`]
    /// then gives), or the whole argument otherwise.
    pub fn next_flag(&mut self) -> Option<String> {
        let arg = self.args.next()?;
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        self.inline = inline;
        Some(flag)
    }

    /// Whether the flag last read came with `=value`.
    #[allow(dead_code, reason = "only idempotent_load has a flag without a value")]
    pub fn has_inline_value(&self) -> bool {
        self.inline.is_some()
    }

    /// The value of `flag`, the flag last read: its `=value`, or else the
    /// next argument; an `Err` is a message for the user.
    pub fn value(&mut self, flag: &str) -> Result<String, String> {
        self.inline
            .clone()
            .or_else(|| self.args.next())
            .ok_or_else(|| format!("{flag} needs a value"))
    }
}
